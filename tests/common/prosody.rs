//! Prosody's part of [`super::Server`]: its configuration, command line,
//! accounts and log.

use std::path::PathBuf;
use std::process::Command;

use super::{Server, COMPONENT, DOMAIN, OTHER_COMPONENT, OTHER_SECRET, SECRET};

const TEMPLATE: &str = include_str!("../fixtures/prosody.cfg.lua.template");

pub fn configure(server: &Server) {
    assert!(
        Command::new("prosodyctl").arg("about").output().is_ok(),
        "prosody is not installed: run scripts/test, which installs it"
    );
    let dir = server.dir.path();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    let config = TEMPLATE
        .replace("@DIR@", dir.to_str().unwrap())
        .replace("@C2S_PORT@", &server.c2s_port.to_string())
        .replace("@COMPONENT_PORT@", &server.component_port.to_string())
        .replace("@OTHER_COMPONENT_PORT@", &server.other_component_port.to_string())
        .replace("@DOMAIN@", DOMAIN)
        .replace("@COMPONENT@", COMPONENT)
        .replace("@OTHER_COMPONENT@", OTHER_COMPONENT)
        .replace("@OTHER_SECRET@", OTHER_SECRET)
        .replace("@SECRET@", SECRET);
    std::fs::write(config_path(server), config).unwrap();
}

/// TLS required on c2s, direct TLS on its own port, with `ca`'s certificate for [`DOMAIN`] where
/// Prosody looks for it (`certificates` directory, `DOMAIN.crt`/`.key`).
pub fn require_tls(server: &Server, ca: &super::tls::TestCa) {
    let certs = server.dir.path().join("certs");
    std::fs::copy(ca.path("server.crt"), certs.join(format!("{DOMAIN}.crt"))).unwrap();
    std::fs::copy(ca.path("server.key"), certs.join(format!("{DOMAIN}.key"))).unwrap();
    let config = std::fs::read_to_string(config_path(server)).unwrap()
        .replace("c2s_require_encryption = false", "c2s_require_encryption = true")
        .replace("c2s_direct_tls_ports = { }", &format!("c2s_direct_tls_ports = {{ {} }}", server.direct_tls_port))
        .replace("modules_disabled = { \"s2s\"; \"tls\"; }", "modules_disabled = { \"s2s\"; }")
        .replace("\"smacks\"; }", "\"smacks\"; \"tls\"; }");
    std::fs::write(config_path(server), config).unwrap();
}

fn config_path(server: &Server) -> PathBuf {
    server.dir.path().join("prosody.cfg.lua")
}

/// Prosody in the foreground: SIGKILL to this process kills the server.
pub fn command(server: &Server) -> Command {
    let mut command = Command::new("prosody");
    command.arg("--config").arg(config_path(server));
    command
}

/// `prosodyctl register` sets the password of an existing account.
pub fn register(server: &Server, domain: &str, user: &str, password: &str) {
    let out = Command::new("prosodyctl")
        .arg("--config")
        .arg(config_path(server))
        .args(["register", user, domain, password])
        .output()
        .unwrap();
    assert!(out.status.success(), "register {user}: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn log(server: &Server) -> String {
    std::fs::read_to_string(server.dir.path().join("prosody.log")).unwrap_or_default()
}
