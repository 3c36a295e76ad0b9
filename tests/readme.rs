//! The server snippets of README.md, exactly as users copy them, pass the
//! servers' own checks: Prosody's `prosodyctl check config`, and an
//! ejabberd started with ejabberd's snippet logs no warning or error.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ejabberd, free_port, wait_until};

/// The code block between `<!-- NAME snippet` and `<!-- end of NAME snippet -->`.
fn snippet(name: &str) -> String {
    let readme = include_str!("../README.md");
    let start = readme.find(&format!("<!-- {name} snippet")).expect("start marker");
    let end = readme.find(&format!("<!-- end of {name} snippet -->")).expect("end marker");
    let lines: Vec<&str> = readme[start..end].lines().skip(1).collect();
    assert!(lines[0].starts_with("```") && lines[lines.len() - 1] == "```", "{lines:?}");
    lines[1..lines.len() - 1].iter().map(|l| format!("{l}\n")).collect()
}

/// `prosodyctl check config` on a minimal private config whose one
/// VirtualHost is followed by `tail`: (exit code, its non-empty lines trimmed).
fn prosody_check(dir: &Path, tail: &str) -> (Option<i32>, Vec<String>) {
    for sub in ["data", "certs"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let d = dir.display();
    let config = format!(
        "run_as_root = true\npidfile = \"{d}/prosody.pid\"\ndata_path = \"{d}/data\"\ncertificates = \"{d}/certs\"\n\
         log = {{ info = \"{d}/prosody.log\"; error = \"{d}/prosody.err\"; }}\n\
         modules_enabled = {{ \"roster\"; \"saslauth\"; \"tls\"; \"disco\"; \"ping\"; }}\n\
         VirtualHost \"example.org\"\n{tail}"
    );
    let path = dir.join("prosody.cfg.lua");
    std::fs::write(&path, config).unwrap();
    let out = Command::new("prosodyctl").arg("--config").arg(&path).args(["check", "config"]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let lines = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    (out.status.code(), lines)
}

#[test]
fn the_prosody_snippet_passes_prosodyctl_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let (code, lines) = prosody_check(dir.path(), &snippet("prosody"));
    let loaded = format!("-  {}", dir.path().join("prosody.cfg.lua").display());
    let expected =
        ["Checking config...", "The following configuration files have been loaded:", &loaded, "Done.", "All checks passed, congratulations!"];
    assert_eq!((code, lines), (Some(0), expected.map(str::to_owned).to_vec()));

    // The check sees a global option placed after the snippet, as the
    // README once had it.
    let (code, lines) = prosody_check(dir.path(), &(snippet("prosody") + "component_interfaces = { \"127.0.0.1\" }\n"));
    assert_eq!(code, Some(2), "{lines:?}");
    assert!(lines.contains(&"You need to move the following option: component_interfaces".to_owned()), "{lines:?}");
}

/// ejabberd's log after starting it with `hosts: [example.org]` and
/// `config`, until it listens on `port` or stops.
fn ejabberd_log(config: &str, port: u16) -> String {
    let dir = tempfile::tempdir().unwrap();
    ejabberd::lay_out(dir.path(), &format!("hosts:\n  - example.org\nloglevel: info\n{config}"));
    let node = format!("xmppmlsreadme{}_{port}@localhost", std::process::id());
    let pid_path = dir.path().join("ejabberd.pid");
    let mut child =
        ejabberd::foreground(dir.path(), &node, &pid_path).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let log_path = dir.path().join("log/ejabberd.log");
    let listening = format!("Start accepting TCP connections at 127.0.0.1:{port} for ejabberd_service");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until(Duration::from_secs(60), || log().contains(&listening) || child.try_wait().unwrap().is_some());
    if let Ok(pid) = std::fs::read_to_string(&pid_path) {
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
    }
    child.wait().unwrap();
    log()
}

/// Lines of `log` at warning level or above.
fn complaints(log: &str) -> Vec<&str> {
    log.lines().filter(|l| ["[warning]", "[error]", "[critical]", "[alert]", "[emergency]"].iter().any(|w| l.contains(w))).collect()
}

#[test]
fn the_ejabberd_snippet_starts_ejabberd_without_a_warning() {
    // The snippet's port, 5347, is moved to a free one: the one change.
    let port = free_port();
    let text = snippet("ejabberd");
    assert_eq!(text.matches("port: 5347\n").count(), 1, "{text}");
    let config = text.replace("port: 5347\n", &format!("port: {port}\n"));
    let log = ejabberd_log(&config, port);
    assert!(log.contains("Configuration loaded successfully"), "{log}");
    assert!(log.contains(&format!("Start accepting TCP connections at 127.0.0.1:{port} for ejabberd_service")), "{log}");
    assert_eq!(complaints(&log), Vec::<&str>::new());

    // A misspelt option is a complaint that stops ejabberd.
    let log = ejabberd_log(&config.replace("password:", "passwrd:"), port);
    assert_eq!(complaints(&log).len(), 1, "{log}");
    assert!(complaints(&log)[0].contains("Unknown option: passwrd"), "{log}");
}
