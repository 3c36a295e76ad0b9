//! What an operator meets: the default config path, exit codes the systemd
//! unit relies on, the log lines and the configuration commands.

mod common;

use common::{run_binary, Prosody, COMPONENT};

/// The systemd unit's RestartPreventExitStatus= codes.
fn unit_restart_prevent_codes() -> Vec<i32> {
    let unit = include_str!("../examples/xmpp-mls.service");
    let line = unit.lines().find_map(|l| l.strip_prefix("RestartPreventExitStatus=")).expect("RestartPreventExitStatus=");
    line.split_whitespace().map(|c| c.parse().unwrap()).collect()
}

#[test]
fn serve_and_admin_read_etc_xmpp_mls_config_toml_by_default() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["serve", "admin"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-mls")).args([command, "--help"]).output().unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        let words: Vec<&str> = help.split_whitespace().collect();
        assert!(words.join(" ").contains("[env: XMPP_MLS_CONFIG=] [default: /etc/xmpp-mls/config.toml]"), "{command}: {help}");
    }
    let unit = include_str!("../examples/xmpp-mls.service");
    assert!(unit.contains("\nExecStart=/usr/local/bin/xmpp-mls serve --config /etc/xmpp-mls/config.toml\n"), "{unit}");
    let (code, stderr) = run_binary(&["serve", "--config", "missing.toml"], dir.path());
    assert_eq!((code, stderr.lines().count()), (Some(2), 1), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_secret_exits_6_once_with_one_line_and_the_unit_does_not_restart_it() {
    let prosody = Prosody::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[component]\njid = \"{COMPONENT}\"\nsecret = \"wrong\"\nserver = \"127.0.0.1:{}\"\n[store]\npath = \"s.db\"\n",
        prosody.component_port
    );
    std::fs::write(dir.path().join("c.toml"), config).unwrap();
    let (code, stderr) = run_binary(&["serve", "--config", "c.toml"], dir.path());
    assert_eq!(code, Some(6), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("the XMPP server refused component.secret") && errors[0].contains("not-authorized"), "{stderr}");
    for retry in ["reconnecting", "cannot connect", "component connected"] {
        assert!(!stderr.contains(retry), "{retry}: {stderr}");
    }
    assert_eq!(unit_restart_prevent_codes(), [2, 6]);
}
