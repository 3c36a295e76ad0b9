//! ejabberd's part of [`super::Server`]: its configuration, command line,
//! accounts (through its admin API over HTTP, which is much faster than an
//! `ejabberdctl` call per account) and log.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Server, COMPONENT, DOMAIN, OTHER_COMPONENT, OTHER_SECRET, SECRET};

const TEMPLATE: &str = include_str!("../fixtures/ejabberd.yml.template");

/// The layout that ejabberdctl wants: `conf/` (with its own ejabberdctl.cfg,
/// or /etc/ejabberd's overrides ours), `log/` and `db/`, all owned by the
/// ejabberd user, as which ejabberdctl runs the server.
pub fn configure(server: &Server) {
    let config = TEMPLATE
        .replace("@C2S_PORT@", &server.c2s_port.to_string())
        .replace("@COMPONENT_PORT@", &server.component_port.to_string())
        .replace("@OTHER_COMPONENT_PORT@", &server.other_component_port.to_string())
        .replace("@API_PORT@", &server.api_port.to_string())
        .replace("@DOMAIN@", DOMAIN)
        .replace("@COMPONENT@", COMPONENT)
        .replace("@OTHER_COMPONENT@", OTHER_COMPONENT)
        .replace("@OTHER_SECRET@", OTHER_SECRET)
        .replace("@SECRET@", SECRET);
    lay_out(server.dir.path(), &config);
}

/// `dir` laid out for an ejabberd whose ejabberd.yml is `config`.
pub fn lay_out(dir: &Path, config: &str) {
    for sub in ["conf", "log", "db"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("conf/ejabberd.yml"), config).unwrap();
    std::fs::write(dir.join("conf/ejabberdctl.cfg"), "").unwrap();
    std::fs::copy("/etc/ejabberd/inetrc", dir.join("conf/inetrc"))
        .expect("ejabberd is not installed: run scripts/test, which installs it");
    let chown = Command::new("chown").arg("-R").arg("ejabberd").arg(dir).status().unwrap();
    assert!(chown.success(), "chown -R ejabberd {}: the ejabberd tests run as root", dir.display());
}

/// STARTTLS required on c2s, direct TLS on its own port, with `ca`'s certificate for [`DOMAIN`].
pub fn require_tls(server: &Server, ca: &super::tls::TestCa) {
    let path = server.dir.path().join("conf/ejabberd.yml");
    let config = std::fs::read_to_string(&path).unwrap()
        .replace("certfiles: []", &format!("certfiles: [\"{}\"]", ca.path("server.pem").display()))
        .replace("starttls_required: false", "starttls_required: true")
        .replace("listen:\n", &format!(
            "listen:\n  -\n    port: {}\n    ip: \"127.0.0.1\"\n    module: ejabberd_c2s\n    tls: true\n",
            server.direct_tls_port
        ));
    std::fs::write(path, config).unwrap();
}

/// `ejabberdctl foreground` runs the Erlang VM as the ejabberd user under
/// `su`; the VM writes its own process id to `ejabberd.pid` for [`kill`].
/// The node name is unique among the instances running at once.
pub fn command(server: &Server) -> Command {
    foreground(server.dir.path(), &node(server), &pid_path(server))
}

/// The Erlang node name of `server`'s ejabberd.
pub fn node(server: &Server) -> String {
    format!("xmppmls{}_{}@localhost", std::process::id(), server.api_port)
}

/// `ejabberdctl foreground` for the ejabberd laid out in `dir` by [`lay_out`].
pub fn foreground(dir: &Path, node: &str, pid_path: &Path) -> Command {
    let mut command = ctl(dir, node);
    command.arg("foreground").env("EJABBERD_PID_PATH", pid_path);
    command
}

/// `ejabberdctl` for the ejabberd laid out in `dir` by [`lay_out`], as
/// node `node`, before its command.
pub fn ctl(dir: &Path, node: &str) -> Command {
    let mut command = Command::new("ejabberdctl");
    command
        .arg("--config-dir")
        .arg(dir.join("conf"))
        .arg("--logs")
        .arg(dir.join("log"))
        .arg("--spool")
        .arg(dir.join("db"))
        .args(["--node", node]);
    command
}

/// Runs the ejabberdctl command `args` on `server`'s running node: its
/// exit code and its output (stdout, then stderr).
pub fn run_ctl(server: &Server, args: &[&str]) -> (Option<i32>, String) {
    let out = ctl(server.dir.path(), &node(server)).args(args).output().unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn pid_path(server: &Server) -> PathBuf {
    server.dir.path().join("ejabberd.pid")
}

/// SIGKILL to the Erlang VM itself: killing `su` would leave it running.
pub fn kill(server: &Server) {
    if let Ok(pid) = std::fs::read_to_string(pid_path(server)) {
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        let _ = std::fs::remove_file(pid_path(server));
    }
}

/// Registers the account, or sets its password if it exists already (as
/// `prosodyctl register` does).
pub fn register(server: &Server, domain: &str, user: &str, password: &str) {
    let account = format!(r#""user":"{user}","host":"{domain}""#);
    let (status, body) = api(server, "register", &format!(r#"{{{account},"password":"{password}"}}"#));
    let (status, body) = match status {
        409 => api(server, "change_password", &format!(r#"{{{account},"newpass":"{password}"}}"#)),
        _ => (status, body),
    };
    assert_eq!(status, 200, "register {user}@{domain}: {body}");
}

/// POSTs a command's JSON arguments to the admin API; returns the HTTP
/// status and the body.
fn api(server: &Server, command: &str, json: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.api_port)).unwrap();
    write!(
        stream,
        "POST /api/{command} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{json}",
        server.api_port,
        json.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

pub fn log(server: &Server) -> String {
    std::fs::read_to_string(server.dir.path().join("log/ejabberd.log")).unwrap_or_default()
}
