//! What an operator meets: the default config path, exit codes the systemd
//! unit relies on, the log lines and the configuration commands.

mod common;

use common::{run_binary, Prosody, COMPONENT};

/// The systemd unit's RestartPreventExitStatus= codes.
fn unit_restart_prevent_codes() -> Vec<i32> {
    let unit = include_str!("../packaging/xmpp-mls.service");
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
        let exit_codes = "Exit codes: 0 stopped by SIGTERM or SIGINT, 1 other failure, 2 bad configuration, 6 the XMPP server refused component.secret.";
        assert_eq!(words.join(" ").contains(exit_codes), command == "serve", "{command}: {help}");
    }
    let unit = include_str!("../packaging/xmpp-mls.service");
    assert!(unit.contains("\nExecStart=/usr/bin/xmpp-mls serve --config /etc/xmpp-mls/config.toml\n"), "{unit}");
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

/// `config check` with the given environment: (exit code, stdout, stderr).
fn config_check(dir: &std::path::Path, file: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-mls"))
        .args(["config", "check", file])
        .current_dir(dir)
        .env_remove("XMPP_MLS_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn config_check_prints_the_effective_configuration_with_the_secret_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = "[component]\njid = \"mls.example.org\"\nsecret = \"in-the-file\"\n[store]\npath = \"/var/lib/x.db\"\n";
    std::fs::write(dir.path().join("c.toml"), file).unwrap();
    let env = [("XMPP_MLS_COMPONENT_SECRET", "from-the-env"), ("XMPP_MLS_LIMITS_MAX_PAGE_SIZE", "50")];
    let (code, stdout, stderr) = config_check(dir.path(), "c.toml", &env);
    assert_eq!((code, stderr.as_str()), (Some(0), ""), "{stdout}");
    assert!(stdout.starts_with("# c.toml: valid. In effect (file, environment, defaults); masked: component.secret\n"), "{stdout}");
    assert!(!stdout.contains("in-the-file") && !stdout.contains("from-the-env"), "{stdout}");
    let printed: toml::Table = stdout.parse().unwrap();
    let owned: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut expected = toml::Table::try_from(xmpp_mls::config::Config::from_toml(file, owned).unwrap()).unwrap();
    expected["component"]["secret"] = toml::Value::String("(masked)".into());
    assert_eq!(printed, expected);
    assert_eq!((printed["limits"]["max_page_size"].as_integer(), printed["store"]["readers"].as_integer()), (Some(50), Some(4)));

    std::fs::write(dir.path().join("bad.toml"), file.replace("[store]", "[limits]\nmax_in_flight = 0\n[store]")).unwrap();
    let (code, stdout, stderr) = config_check(dir.path(), "bad.toml", &[]);
    assert_eq!((code, stdout.as_str()), (Some(2), ""));
    assert_eq!(stderr, "config error: limits.max_in_flight: must be greater than 0\n");
}

#[test]
fn every_key_that_looks_secret_is_masked() {
    let secret_like = ["secret", "password", "token", "credential", "private"];
    let keys = xmpp_mls::config::keys();
    let looks_secret: Vec<&String> = keys.iter().filter(|k| secret_like.iter().any(|w| k.contains(w))).collect();
    assert_eq!(looks_secret, xmpp_mls::config::SECRET_KEYS);
}

#[test]
fn config_defaults_prints_every_key_with_a_comment_and_is_the_example_file() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-mls")).args(["config", "defaults"]).output().unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!((out.status.code(), printed.as_str()), (Some(0), include_str!("../examples/xmpp-mls.toml")));
    let mut section = "";
    let mut seen = Vec::new();
    let lines: Vec<&str> = printed.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s;
        } else if let Some((key, _)) = line.split_once(" = ").filter(|_| !line.starts_with('#')) {
            assert!(i > 0 && lines[i - 1].starts_with("# "), "{section}.{key} has no comment above it");
            seen.push(format!("{section}.{key}"));
        }
    }
    let mut keys = xmpp_mls::config::keys();
    keys.sort();
    seen.sort();
    assert_eq!(seen, keys);
}

#[test]
fn the_readme_configuration_table_lists_exactly_the_keys() {
    let readme = include_str!("../README.md");
    let (_, reference) = readme.split_once("### Configuration reference").expect("the section");
    let table = reference.split("\n#").next().unwrap();
    let mut rows: Vec<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split_once('`').map(|(key, _)| key.to_owned()))
        .collect();
    rows.sort();
    let mut keys = xmpp_mls::config::keys();
    keys.sort();
    let missing: Vec<&String> = keys.iter().filter(|k| !rows.contains(k)).collect();
    let unknown: Vec<&String> = rows.iter().filter(|r| !keys.contains(r)).collect();
    assert_eq!((missing, unknown), (vec![], vec![]));
    assert_eq!(rows, keys, "each key once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_default_level_json_logs_start_with_one_startup_line_and_carry_no_migration_chatter_or_source_paths() {
    let prosody = Prosody::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.sqlite3");
    let config = format!(
        "[component]\njid = \"{COMPONENT}\"\nsecret = \"{}\"\nserver = \"127.0.0.1:{}\"\n[store]\npath = \"{}\"\n[log]\nformat = \"json\"\n",
        common::SECRET,
        prosody.component_port,
        store.display()
    );
    std::fs::write(dir.path().join("c.toml"), config).unwrap();
    let log_path = dir.path().join("log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-mls"))
        .args(["serve", "--config", "c.toml"])
        .current_dir(dir.path())
        .env_remove("XMPP_MLS_LOG_LEVEL")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log_path).unwrap();
    let connected = common::wait_until(std::time::Duration::from_secs(15), || read().contains("component connected"));
    let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let log = read();
    assert!(connected, "{log}");
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let fields = &lines[0]["fields"];
    let expected = serde_json::json!({
        "message": "starting xmpp-mls",
        "version": env!("CARGO_PKG_VERSION"),
        "jid": COMPONENT,
        "server": format!("127.0.0.1:{}", prosody.component_port),
        "store": format!("sqlite:{}", store.display()),
        "synchronous": "Full",
        "max_payload_size": 245760,
        "max_stanza_out": 458752,
        "max_in_flight": 256,
        "account_rate": 50,
        "account_burst": 200,
        "max_members": 10000,
        "max_devices_per_account": 16,
        "metrics": "",
    });
    assert_eq!((fields, &lines[0]["level"], &lines[0]["target"]), (&expected, &"INFO".into(), &"xmpp_mls::component".into()));
    assert_eq!(log.matches("starting xmpp-mls").count(), 1, "{log}");
    for line in &lines {
        let target = line["target"].as_str().unwrap();
        assert!(!target.starts_with("rusqlite_migration") && !target.starts_with("refinery"), "{line}");
        let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["fields", "level", "target", "timestamp"], "{line}");
        assert!(!line["fields"].as_object().unwrap().keys().any(|k| k.starts_with("log.")), "{line}");
        assert!(!line.to_string().contains(".rs"), "{line}");
    }
}
