//! The Python package (python/, the wheel that scripts/test builds) on a
//! fresh virtualenv, and its slixmpp plugin in a group with the Rust CLI.

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Component, Kind, Server, COMPONENT, DOMAIN};
use serde_json::{json, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The wheel that scripts/test built into target/wheels.
fn wheel() -> PathBuf {
    let dir = Path::new(ROOT).join("target/wheels");
    let entries = std::fs::read_dir(&dir).map(|entries| entries.map(|e| e.unwrap().path()).collect::<Vec<_>>());
    let wheels: Vec<PathBuf> = entries
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("xmpp_mls-"))
        .collect();
    assert_eq!(wheels.len(), 1, "one xmpp_mls wheel in {}: run scripts/test, which builds it", dir.display());
    wheels.into_iter().next().unwrap()
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{command:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

#[test]
fn the_wheel_installs_into_a_fresh_virtualenv_and_runs_the_core_without_a_server() {
    let wheel = wheel();
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("xmpp_mls-0.1.0-cp39-abi3-"), "an abi3 wheel for Python 3.9 and later: {name}");
    let venv = tempfile::tempdir().unwrap();
    run(Command::new("python3").args(["-m", "venv"]).arg(venv.path()));
    let python = venv.path().join("bin/python");
    run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "--no-index"]).arg(&wheel));
    run(Command::new(&python).args(["-c", "import xmpp_mls"]));
    let out = run(Command::new(&python).arg(Path::new(ROOT).join("tests/python/core_check.py")));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 9, "{out}");
    assert_eq!(lines[..2], ["['StanzaError', 'MlsError', 'Exception']", "alice@example.org 0o600"]);
    assert!(lines[2].starts_with("MlsError ") && lines[2].ends_with("holds a device of alice@example.org, not bob@example.org"), "{out}");
    let expected = [
        "[\"<presence xmlns='jabber:client'/>\"] None",
        "1 True True 130.0",
        "True StanzaError auth/forbidden (not-member): no auth forbidden not-member no",
        "[] 2 [(2, UnknownGroupError('unknown group nope@mls.example.org'))]",
        "[] 130.0",
        "True TimeoutError no answer within 30s None",
    ];
    assert_eq!(lines[3..], expected);
}

/// `tests/python/mls_agent.py`: a slixmpp client with the plugin, as
/// `user@DOMAIN` (password = user), its device in `state`.
struct Agent {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
    /// Events read while waiting for something else, oldest first.
    events: VecDeque<Value>,
    stderr: PathBuf,
    /// Whether the server offers stream management (XEP-0198): the
    /// Prosody fixture does, the ejabberd one has no mod_stream_mgmt.
    stream_management: bool,
}

impl Agent {
    fn start(server: &Server, user: &str, state: &Path) -> Agent {
        let mut agent = Agent::spawn("mls_agent.py", server, user, state, &[COMPONENT]);
        agent.event("ready", |_| true);
        agent
    }

    /// `tests/python/SCRIPT JID PASSWORD HOST PORT STATE EXTRA...`, which
    /// prints JSON lines.
    fn spawn(script: &str, server: &Server, user: &str, state: &Path, extra: &[&str]) -> Agent {
        let python = Path::new(ROOT).join("target/py/bin/python");
        assert!(python.exists(), "target/py is missing: run scripts/test, which installs slixmpp and the wheel");
        let stderr = state.with_extension("stderr");
        let mut child = Command::new(python)
            .arg(Path::new(ROOT).join("tests/python").join(script))
            .args([&format!("{user}@{DOMAIN}"), user, "127.0.0.1", &server.c2s_port.to_string()])
            .arg(state)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take().unwrap();
        let stream_management = server.kind == Kind::Prosody;
        Agent { child, stdin, lines, events: VecDeque::new(), stderr, stream_management }
    }

    /// The next line, within 30 s.
    fn line(&mut self) -> Value {
        let line = self.lines.recv_timeout(Duration::from_secs(30));
        line.unwrap_or_else(|e| panic!("agent: {e}; stderr:\n{}", std::fs::read_to_string(&self.stderr).unwrap_or_default()))
    }

    /// The result of `op(args)`, or its error as the agent printed it.
    fn call(&mut self, op: &str, args: Value) -> Value {
        writeln!(self.stdin, "{}", json!({"op": op, "args": args})).unwrap();
        loop {
            let line = self.line();
            match line.get("op") {
                Some(got) if got == op => return line,
                _ => self.events.push_back(line),
            }
        }
    }

    /// The result of `op(args)`, which must succeed.
    fn ok(&mut self, op: &str, args: Value) -> Value {
        let line = self.call(op, args);
        assert!(line.get("error").is_none(), "{op}: {line}");
        line["result"].clone()
    }

    /// The first event `kind` that `pred` accepts, taken out of those read
    /// (reading more, for 30 s at most).
    fn event(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let wanted = |e: &Value| e["event"] == kind && pred(e);
        if let Some(i) = self.events.iter().position(wanted) {
            return self.events.remove(i).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let next = self.line();
            if wanted(&next) {
                return next;
            }
            self.events.push_back(next);
        }
        panic!("no {kind} event in time")
    }

    /// The bodies of the "message" events of `group` read so far, in
    /// order; every event read so far is forgotten.
    fn bodies(&mut self, group: &str) -> Vec<String> {
        let events = std::mem::take(&mut self.events);
        let messages = events.iter().filter(|e| e["event"] == "message" && e["group"] == group);
        messages.map(|e| e["body"].as_str().unwrap().to_owned()).collect()
    }

    /// Disconnects; the agent must exit cleanly.
    fn quit(mut self) {
        writeln!(self.stdin, "{}", json!({"op": "quit"})).unwrap();
        let exited = common::wait_until(Duration::from_secs(20), || self.child.try_wait().unwrap().is_some());
        assert!(exited, "the agent did not exit");
        let status = self.child.wait().unwrap();
        let stderr = std::fs::read_to_string(&self.stderr).unwrap();
        assert!(status.success(), "agent: {status}; stderr:\n{stderr}");
        // slixmpp logs errors (of handlers, of stream management's counts) and goes on.
        assert!(!stderr.contains("ERROR:"), "{stderr}");
        assert_eq!(stderr.contains("stream management enabled"), self.stream_management, "{stderr}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `xmpp-mls client` as `user@DOMAIN` with its device in `dir`: its
/// standard output; it must succeed.
fn cli(server: &Server, dir: &Path, user: &str, args: &[&str]) -> String {
    run(Command::new(env!("CARGO_BIN_EXE_xmpp-mls"))
        .args(["client", "--jid", &format!("{user}@{DOMAIN}"), "--insecure-tcp", "--service", COMPONENT])
        .arg("--server")
        .arg(format!("127.0.0.1:{}", server.c2s_port))
        .arg("--state")
        .arg(dir.join(format!("{user}.sqlite3")))
        .args(args)
        .env("XMPP_MLS_PASSWORD", user)
        .env("XMPP_MLS_PASSPHRASE", passphrase(user)))
}

/// A server with the service (`config` added to its configuration), the
/// accounts `users` (password = user) and a directory for devices, where
/// alice's CLI device is set up.
fn start(users: &[&str], config: &str) -> (Server, Component, tempfile::TempDir) {
    let server = Server::start();
    let component = Component::start(&server, config);
    let dir = tempfile::tempdir().unwrap();
    for user in users {
        server.register(user, user);
    }
    cli(&server, dir.path(), "alice", &["device", "init"]);
    (server, component, dir)
}

fn passphrase(user: &str) -> String {
    format!("{user}'s passphrase")
}

#[test]
fn a_slixmpp_client_with_the_plugin_and_the_rust_cli_share_groups() {
    let (server, _component, dir) = start(&["alice", "bob", "carol"], "[directory]\nlow_water = 19\n");
    cli(&server, dir.path(), "carol", &["device", "init"]);
    let bob_state = dir.path().join("bob.sqlite3");
    let mut bob = Agent::start(&server, "bob", &bob_state);
    bob.ok("publish", json!([]));

    // bob (Python) creates a group and adds alice (Rust).
    let bobs = bob.ok("create_group", json!([]));
    let bobs = bobs.as_str().unwrap().to_owned();
    assert_eq!(bob.ok("add", json!([bobs, ["alice@example.org"]]))["epoch"], 1);
    let added = bob.event("member_added", |e| e["group"] == bobs.as_str());
    assert_eq!((&added["account"], &added["epoch"]), (&json!("alice@example.org"), &json!(1)));
    // alice's CLI finds the Welcome in her inbox before sending.
    let out = cli(&server, dir.path(), "alice", &["group", "send", &bobs, "hi bob, in your group"]);
    assert!(out.starts_with("delivered as "), "{out}");
    let got = bob.event("message", |e| e["group"] == bobs.as_str());
    assert_eq!((&got["account"], &got["body"]), (&json!("alice@example.org"), &json!("hi bob, in your group")));

    // alice creates a group and adds bob, who is welcomed live.
    let group = cli(&server, dir.path(), "alice", &["group", "create"]).trim().to_owned();
    let out = cli(&server, dir.path(), "alice", &["group", "add", &group, "bob@example.org"]);
    assert!(out.starts_with("added; epoch 1 "), "{out}");
    bob.event("joined", |e| e["group"] == group.as_str());
    // alice's claim brought bob's pool to the low-water mark: the service's
    // notice made bob's plugin top it up again.
    let refilled = bob.event("refilled", |_| true);
    assert_eq!((&refilled["uploaded"], &refilled["pool"]), (&json!(1), &json!(20)));
    bob.ok("join_all", json!([]));
    let out = cli(&server, dir.path(), "alice", &["group", "send", &group, "hello from rust"]);
    assert!(out.starts_with("delivered as "), "{out}");
    let got = bob.event("message", |e| e["group"] == group.as_str());
    assert_eq!((&got["account"], &got["body"]), (&json!("alice@example.org"), &json!("hello from rust")));
    let id = bob.ok("send", json!([group, "hello from python"]));
    let delivered = bob.event("delivered", |e| e["id"] == id);
    assert_eq!(delivered["group"], group.as_str());
    let bob_device = got_device(&mut bob, &group);
    let out = cli(&server, dir.path(), "alice", &["group", "listen", "--seconds", "2"]);
    let node = group.split('@').next().unwrap();
    assert!(out.contains(&format!("[{node}] bob@example.org/{bob_device}: hello from python\n")), "{out}");

    // bob goes offline; alice adds carol, removes her and updates, sending between.
    bob.quit();
    let mut expected = Vec::new();
    for (i, step) in [&["add", "carol@example.org"][..], &["remove", "carol@example.org"], &["update"]].iter().enumerate() {
        let out = cli(&server, dir.path(), "alice", &[&["group", step[0], &group][..], &step[1..]].concat());
        assert!(out.contains(&format!("; epoch {}", i + 2)), "{step:?}: {out}");
        let text = format!("while bob was away, epoch {}", i + 2);
        cli(&server, dir.path(), "alice", &["group", "send", &group, &text]);
        expected.push(text);
    }

    // Back online, bob catches up every message in order.
    let mut bob = Agent::start(&server, "bob", &bob_state);
    bob.ok("catch_up", json!([]));
    let in_group: Vec<&Value> = bob.events.iter().filter(|e| e["group"] == group.as_str()).collect();
    let epochs: Vec<&Value> = in_group.iter().filter(|e| e["event"] == "epoch").map(|e| &e["epoch"]).collect();
    assert_eq!(epochs, [&json!(2), &json!(3), &json!(4)]);
    // Member changes from the second epoch this session saw in the group on.
    let changes: Vec<(&Value, &Value, &Value)> = in_group
        .iter()
        .filter(|e| e["event"].as_str().is_some_and(|k| k.starts_with("member_")))
        .map(|e| (&e["event"], &e["account"], &e["epoch"]))
        .collect();
    assert_eq!(changes, [(&json!("member_removed"), &json!("carol@example.org"), &json!(3))]);
    assert_eq!(bob.bodies(&group), expected);
    bob.ok("join_all", json!([]));

    // bob commits an update, which alice's CLI applies before its own.
    assert_eq!(bob.ok("update", json!([group]))["epoch"], 5);
    let out = cli(&server, dir.path(), "alice", &["group", "update", &group]);
    assert!(out.starts_with("updated; epoch 6"), "{out}");
    let of_group = |e: &Value| e["group"] == group.as_str();
    assert_eq!(bob.event("epoch", of_group)["epoch"], 5, "bob's own commit");
    let epoch = bob.event("epoch", of_group);
    assert_eq!(epoch["epoch"], 6, "alice's commit, live on the feed");
    let mut members: Vec<String> = epoch["members"].as_array().unwrap().iter().map(|m| m[0].as_str().unwrap().to_owned()).collect();
    members.sort();
    assert_eq!(members, ["alice@example.org", "bob@example.org"]);
    bob.quit();
}

/// bob's device id, from the members of `group` as bob's plugin lists them.
fn got_device(bob: &mut Agent, group: &str) -> String {
    let members = bob.ok("members", json!([group]));
    let mine = members.as_array().unwrap().iter().find(|m| m[0] == "bob@example.org").expect("bob is a member");
    mine[1].as_str().unwrap().to_owned()
}

#[test]
fn the_echo_bot_example_answers_in_an_encrypted_group() {
    let (server, _component, dir) = start(&["alice", "echo"], "");
    let mut bot = Agent::spawn("echo_bot_runner.py", &server, "echo", &dir.path().join("echo.sqlite3"), &[]);
    let started = bot.event("started", |_| true);
    assert_eq!(started["service"], COMPONENT, "found among the server's items (XEP-0030)");
    let group = cli(&server, dir.path(), "alice", &["group", "create"]).trim().to_owned();
    cli(&server, dir.path(), "alice", &["group", "add", &group, "echo@example.org"]);
    bot.event("joined", |e| e["group"] == group.as_str());
    cli(&server, dir.path(), "alice", &["group", "send", &group, "ping"]);
    let out = cli(&server, dir.path(), "alice", &["group", "listen", "--seconds", "3"]);
    let node = group.split('@').next().unwrap();
    let echoes: Vec<&str> = out.lines().filter(|l| l.starts_with(&format!("[{node}] echo@example.org/"))).collect();
    assert_eq!(echoes.len(), 1, "{out}");
    assert!(echoes[0].ends_with(": ping"), "{out}");
}

#[test]
fn a_new_python_device_reads_the_history_from_the_vault() {
    let (server, _component, dir) = start(&["alice", "bob"], "");
    cli(&server, dir.path(), "bob", &["vault", "init"]);
    let mut laptop = Agent::start(&server, "bob", &dir.path().join("bob-laptop.sqlite3"));
    laptop.ok("publish", json!([]));
    laptop.ok("open_vault", json!([passphrase("bob")]));
    let group = cli(&server, dir.path(), "alice", &["group", "create"]).trim().to_owned();
    cli(&server, dir.path(), "alice", &["group", "add", &group, "bob@example.org"]);
    laptop.event("joined", |e| e["group"] == group.as_str());
    laptop.ok("join_all", json!([]));
    for text in ["first secret", "second secret"] {
        cli(&server, dir.path(), "alice", &["group", "send", &group, text]);
        laptop.event("message", |e| e["body"] == text);
    }
    laptop.quit();

    // A tablet, enrolled by the CLI device (its code, no passphrase), opens
    // the vault from Python with its own key.
    let tablet_dir = dir.path().join("tablet");
    std::fs::create_dir(&tablet_dir).unwrap();
    cli(&server, &tablet_dir, "bob", &["device", "init"]);
    let mut tablet = Agent::start(&server, "bob", &tablet_dir.join("bob.sqlite3"));
    tablet.ok("publish", json!([]));
    let failed = tablet.call("read_history", json!([group]));
    assert_eq!((&failed["error"], &failed["text"]), (&json!("MlsError"), &json!("no vault is open")));
    let failed = tablet.call("open_vault", json!([]));
    assert_eq!(failed["text"], json!("this device is not enrolled in the vault"), "{failed}");
    let out = cli(&server, &tablet_dir, "bob", &["vault", "enroll-request"]);
    let code = out.split("`vault enroll ").nth(1).and_then(|rest| rest.split('`').next()).unwrap_or_default();
    cli(&server, dir.path(), "bob", &["vault", "enroll", code]);
    tablet.ok("open_vault", json!([]));
    let history = tablet.ok("read_history", json!([group]));
    let entries: Vec<(&str, &str)> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["account"].as_str().unwrap(), e["body"].as_str().unwrap()))
        .collect();
    assert_eq!(entries, [("alice@example.org", "first secret"), ("alice@example.org", "second secret")]);
    assert_eq!(history["unreadable"], json!([]));
    tablet.quit();
}
