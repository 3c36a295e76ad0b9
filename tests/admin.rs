//! `xmpp-mls admin` end to end: state made through a real component and
//! XMPP server, then every subcommand run as a process beside the running
//! component, its output compared with what the store file holds.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::db::StoreDb;
use common::{alice_and_bob, member, wait_until, Component, Prosody, COMPONENT};
use serde_json::{json, Value};
use xmpp_mls::client::{directory_jid, ClientError};
use xmpp_mls::protocol::address::{group_node, Address};
use xmpp_mls::protocol::vault::VaultRequest;
use xmpp_mls::protocol::{format_time, now};
use xmpp_mls::store::sql::Param;
use xmpp_mls::store_params;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::DefinedCondition;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `xmpp-mls admin --config <the component's config> args…`, with
/// `stdin` as its input and `env` added to its environment.
fn admin_with(component: &Component, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
    let config = component.dir.path().join("xmpp-mls.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xmpp-mls"))
        .arg("admin")
        .arg("--config")
        .arg(&config)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    Run { code: out.status.code(), stdout: text(out.stdout), stderr: text(out.stderr) }
}

fn admin(component: &Component, args: &[&str]) -> Run {
    admin_with(component, args, "", &[])
}

/// `admin --json args…`, which must succeed.
fn admin_json(component: &Component, args: &[&str]) -> Value {
    let run = admin(component, &[&["--json"], args].concat());
    assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

/// The SQLite file at `path`, for the checks of SQLite's own files.
fn sqlite_file(path: &Path) -> StoreDb {
    StoreDb { config: xmpp_mls::config::StoreConfig { path: path.to_owned(), ..Default::default() } }
}

fn count(db: &StoreDb, sql: &str, params: &[&dyn Param]) -> u64 {
    db.one::<i64>(sql, params) as u64
}

/// The store's size as `stats` reports it: the engine's own measure.
fn database_bytes(db: &StoreDb) -> u64 {
    let sql = match db.is_postgres() {
        true => "SELECT pg_database_size(current_database())",
        false => "SELECT p.page_count * s.page_size FROM pragma_page_count() p, pragma_page_size() s",
    };
    count(db, sql, &[])
}

/// The store's schema version, as the engine keeps it.
fn schema_version(db: &StoreDb) -> u64 {
    let sql = match db.is_postgres() {
        true => "SELECT max(version) FROM schema_version",
        false => "PRAGMA user_version",
    };
    count(db, sql, &[])
}

fn group_id(jid: &str) -> Vec<u8> {
    match Address::parse(&Jid::new(jid).unwrap()).unwrap() {
        Address::Group(id) => id,
        other => panic!("{jid} is {other:?}"),
    }
}

/// The text table of `fields` lines ("name  value") as a map.
fn text_fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once("  ").unwrap_or_else(|| panic!("not a field line: {l:?}"));
            (k.to_owned(), v.trim().to_owned())
        })
        .collect()
}

/// The rows of a group's MLS state: its state blob and queued proposals.
fn mls_state_rows(db: &StoreDb, id: &[u8]) -> u64 {
    count(db, "SELECT count(*) FROM groups WHERE group_id = ?1 AND state IS NOT NULL", store_params![id])
        + count(db, "SELECT count(*) FROM group_proposals WHERE group_id = ?1", store_params![id])
}

/// Puts a vault blob of `size` bytes for the session's account.
async fn put_blob(session: &xmpp_mls::client::Session, account: &str, size: usize) {
    let at = directory_jid(&BareJid::new(account).unwrap(), &Jid::new(COMPONENT).unwrap());
    let put = VaultRequest::Put { name: "notes".into(), if_version: 0, data: vec![7; size] };
    session.iq(&at, "set", put.to_element()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_retention_check_and_backup_match_the_store() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, bob, group) = alice_and_bob(&prosody, &dir).await;
    alice.send_body(&group, "hello").await.unwrap();
    let solo = alice.create().await.unwrap();
    alice.send_body(&solo, "note to self").await.unwrap();
    put_blob(&bob.session, "bob@example.org", 100).await;
    let db = component.db();

    // stats: totals, as JSON and as text.
    let stats = admin_json(&component, &["stats"]);
    let page_bytes = database_bytes(&db);
    assert_eq!(
        stats,
        json!({
            "accounts": 2, "devices": 2, "groups": 2, "vault_blobs": 1, "vault_bytes": 100,
            "key_packages": count(&db, "SELECT count(*) FROM key_packages", &[]),
            "archive_messages": count(&db, "SELECT count(*) FROM archive", &[]),
            "inbox_notices": count(&db, "SELECT count(*) FROM inbox", &[]),
            "database_bytes": page_bytes,
        })
    );
    let text = admin(&component, &["stats"]);
    let fields = text_fields(&text.stdout);
    assert_eq!(fields.len(), 9, "{}", text.stdout);
    for (k, v) in stats.as_object().unwrap() {
        assert_eq!(fields[k], v.to_string(), "{k}");
    }

    // groups: one row per group, each as the store has it.
    let groups = admin_json(&component, &["groups"]);
    let rows = groups["groups"].as_array().unwrap();
    let jids: Vec<&str> = rows.iter().map(|g| g["jid"].as_str().unwrap()).collect();
    let order: Vec<String> = db
        .all::<Vec<u8>>("SELECT group_id FROM groups ORDER BY created_at, group_id", &[])
        .iter()
        .map(|id| format!("{}@{COMPONENT}", group_node(id)))
        .collect();
    assert_eq!(jids, order, "oldest first");
    assert_eq!(jids.len(), 2);
    for row in rows {
        let id = group_id(row["jid"].as_str().unwrap());
        let (epoch, created): (i64, i64) = db.two("SELECT epoch, created_at FROM groups WHERE group_id = ?1", store_params![id]);
        let last: Option<i64> = db.one(&format!("SELECT max(created_at) FROM archive WHERE {}", common::GROUP_ROWS), store_params![id]);
        let expected = json!({
            "jid": row["jid"],
            "epoch": epoch,
            "members": count(&db, "SELECT count(*) FROM members WHERE group_id = ?1", store_params![id]),
            "accounts": count(&db, "SELECT count(DISTINCT account) FROM members WHERE group_id = ?1", store_params![id]),
            "archive_messages": count(&db, &format!("SELECT count(*) FROM archive WHERE {}", common::GROUP_ROWS), store_params![id]),
            "last_activity": format_time(last.unwrap_or(created)),
        });
        assert_eq!(*row, expected);
    }
    let row = |jid: &BareJid| rows.iter().find(|r| r["jid"] == jid.as_str()).unwrap();
    assert_eq!((row(&group)["epoch"].as_u64(), row(&group)["members"].as_u64()), (Some(1), Some(2)));
    assert_eq!((row(&solo)["epoch"].as_u64(), row(&solo)["members"].as_u64()), (Some(0), Some(1)));
    let text = admin(&component, &["groups"]).stdout;
    assert!(text.starts_with("JID ") && text.contains("ARCHIVE MESSAGES"), "{text}");
    assert!(text.lines().nth(1).unwrap().starts_with(&format!("{} ", order[0])), "{text}");

    // group: its members, with their devices and feed presence.
    let detail = admin_json(&component, &["group", group.as_str()]);
    assert_eq!(detail["epoch"], 1);
    let members: Vec<(u64, String, String, bool)> = detail["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["leaf"].as_u64().unwrap(), m["account"].as_str().unwrap().into(), m["device"].as_str().unwrap().into(), m["online"].as_bool().unwrap()))
        .collect();
    let id = group_id(group.as_str());
    let on_feed = |device: &str| count(&db, "SELECT count(*) FROM feed WHERE group_id = ?1 AND device_id = ?2", store_params![id, device]) == 1;
    let expected = vec![
        (0, "alice@example.org".to_owned(), alice.device().id().to_owned(), on_feed(alice.device().id())),
        (1, "bob@example.org".to_owned(), bob.device().id().to_owned(), on_feed(bob.device().id())),
    ];
    assert_eq!(members, expected);
    let missing = admin(&component, &["group", &format!("aaaa@{COMPONENT}")]);
    assert_eq!((missing.code, missing.stderr.trim()), (Some(1), "no such group"));
    let foreign = admin(&component, &["group", "aaaa@elsewhere.example"]);
    assert_eq!(foreign.code, Some(1));
    assert!(foreign.stderr.contains("is not a group JID of mls.example.org"), "{}", foreign.stderr);

    // account: devices with their KeyPackage stock, and groups.
    let account = admin_json(&component, &["account", "alice@example.org"]);
    let pool = |last_resort: i64| {
        count(
            &db,
            "SELECT count(*) FROM key_packages WHERE account = 'alice@example.org' AND device_id = ?1
               AND last_resort = ?2 AND not_after > ?3",
            store_params![alice.device().id(), last_resort, now()],
        )
    };
    let mut alice_groups = vec![json!({"jid": group.as_str()}), json!({"jid": solo.as_str()})];
    alice_groups.sort_by_key(|g| group_id(g["jid"].as_str().unwrap()));
    let expires: i64 = db.one("SELECT expires_at FROM devices WHERE device_id = ?1", store_params![alice.device().id()]);
    assert_eq!(
        account,
        json!({
            "account": "alice@example.org", "inbox_notices": count(&db, "SELECT count(*) FROM inbox WHERE account = 'alice@example.org'", &[]),
            "vault_blobs": 0, "vault_bytes": 0,
            "devices": [{"device": alice.device().id(), "label": null, "expires": format_time(expires),
                         "key_packages": pool(0), "last_resort": pool(1) == 1}],
            "groups": alice_groups,
        })
    );
    assert_eq!(account["devices"][0]["key_packages"], 5, "member() uploads 5 and none was claimed");
    let text = admin(&component, &["account", "alice@example.org"]).stdout;
    assert!(text.contains("\ndevices:\nDEVICE") && text.contains(&format!("{}  -", alice.device().id())), "{text}");

    // check: integrity and schema version.
    let version = schema_version(&db);
    assert_eq!(admin_json(&component, &["check"]), json!({"integrity": "ok", "schema_version": version}));

    // backup: a copy equal to the store, never over an existing file.
    let copy = dir.path().join("backup.sqlite3");
    if db.is_postgres() {
        // PostgreSQL: backups are pg_dump's; the command refuses and says so.
        let refused = admin(&component, &["backup", copy.to_str().unwrap()]);
        assert_eq!(refused.code, Some(1));
        assert!(refused.stderr.contains("pg_dump"), "{}", refused.stderr);
    } else {
        let backup = admin_json(&component, &["backup", copy.to_str().unwrap()]);
        assert_eq!(backup, json!({"backup": copy.to_str().unwrap(), "bytes": std::fs::metadata(&copy).unwrap().len()}));
        assert_eq!(sqlite_file(&copy).dump(), db.dump());
        let again = admin(&component, &["backup", copy.to_str().unwrap()]);
        assert_eq!(again.code, Some(1));
        assert!(again.stderr.contains("output file already exists"), "{}", again.stderr);
    }

    // retention (here 1 s): what went is what the store lost; the solo
    // group's archive (no handshake to wait for) goes entirely.
    let aged = || count(&db, "SELECT count(*) FROM archive WHERE created_at >= ?1", store_params![now() - 1]) == 0;
    assert!(wait_until(std::time::Duration::from_secs(10), aged));
    let before = count(&db, "SELECT count(*) FROM archive", &[]);
    let run = admin_with(&component, &["--json", "retention"], "", &[("XMPP_MLS_HISTORY_RETENTION_SECS", "1")]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let after = count(&db, "SELECT count(*) FROM archive", &[]);
    let pruned = serde_json::from_str::<Value>(&run.stdout).unwrap();
    assert_eq!(pruned, json!({"pruned_messages": before - after, "archive_messages": after}));
    assert_eq!(count(&db, &format!("SELECT count(*) FROM archive WHERE {}", common::GROUP_ROWS), store_params![group_id(solo.as_str())]), 0);
    assert!(before > after, "something was pruned");
    let detail = admin_json(&component, &["group", group.as_str()]);
    let pruned_seq = count(&db, "SELECT pruned_seq FROM groups WHERE group_id = ?1", store_params![id]);
    assert_eq!((detail["pruned_through"].as_u64(), detail["archive_messages"].as_u64()), (Some(pruned_seq), Some(after)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_ask_first_and_delete_exactly_their_rows() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (_alice, _bob, group) = alice_and_bob(&prosody, &dir).await;
    let mut carol = member(&prosody, &dir, "carol", "tablet").await;
    let solo = carol.create().await.unwrap();
    put_blob(&carol.session, "carol@example.org", 50).await;
    let db = component.db();
    let (kept, gone) = (group_id(group.as_str()), group_id(solo.as_str()));
    let kept_state = mls_state_rows(&db, &kept);
    assert!(mls_state_rows(&db, &gone) > 0 && kept_state > 0);

    // Declined (end of input, or "n"): nothing changes.
    let digest = db.dump();
    for answer in ["", "n\n"] {
        let run = admin_with(&component, &["purge-group", solo.as_str()], answer, &[]);
        assert_eq!((run.code, run.stdout.as_str()), (Some(1), "purged  no\n"));
        assert!(run.stderr.starts_with(&format!("Purge group {solo} (epoch 0, 1 members, ")), "{}", run.stderr);
        let run = admin_with(&component, &["purge-account", "carol@example.org"], answer, &[]);
        assert_eq!(run.code, Some(1));
    }
    assert_eq!(db.dump(), digest);

    // purge-group, confirmed with "y": every row of that group goes, the other group's stay.
    // Archive rows, their ids and resend keys are keyed by the group's number.
    let number = |id: &[u8]| count(&db, "SELECT num FROM groups WHERE group_id = ?1", store_params![id]);
    let numbers = HashMap::from([(gone.clone(), number(&gone)), (kept.clone(), number(&kept))]);
    let group_rows = |id: &Vec<u8>| {
        ["groups", "members", "feed", "group_accounts"]
            .iter()
            .map(|t| count(&db, &format!("SELECT count(*) FROM {t} WHERE group_id = ?1"), store_params![id]))
            .sum::<u64>()
            + count(&db, "SELECT count(*) FROM acks WHERE scope = ?1", store_params![id])
            + ["SELECT count(*) FROM archive WHERE pos >> 32 = ?1", "SELECT count(*) FROM archive_ids WHERE pos >> 32 = ?1", "SELECT count(*) FROM resends WHERE grp = ?1"]
                .iter()
                .map(|sql| count(&db, sql, store_params![numbers[id] as i64]))
                .sum::<u64>()
    };
    let kept_rows = group_rows(&kept);
    let run = admin_with(&component, &["purge-group", solo.as_str()], "y\n", &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(text_fields(&run.stdout), HashMap::from([("purged".into(), "yes".into()), ("group".into(), solo.to_string())]));
    assert_eq!((group_rows(&gone), mls_state_rows(&db, &gone)), (0, 0));
    assert_eq!((group_rows(&kept), mls_state_rows(&db, &kept)), (kept_rows, kept_state));
    let listed = admin_json(&component, &["groups"]);
    assert_eq!(listed["groups"].as_array().unwrap().len(), 1);
    let request = "<group-info xmlns='urn:xmpp:mls:0'/>".parse().unwrap();
    match carol.session.iq(&solo.clone().into(), "get", request).await {
        Err(ClientError::Stanza(e)) => assert_eq!(e.defined_condition, DefinedCondition::ItemNotFound),
        other => panic!("the service still knows the group: {other:?}"),
    }

    // purge-account --yes: reports what it deleted, the store agrees.
    let carol_rows = |table: &str| count(&db, &format!("SELECT count(*) FROM {table} WHERE account = 'carol@example.org'"), &[]);
    let expected = json!({
        "purged": true, "account": "carol@example.org",
        "devices": carol_rows("devices"), "key_packages": carol_rows("key_packages"),
        "subscriptions": count(&db, "SELECT count(*) FROM subscriptions WHERE account = 'carol@example.org' OR subscriber LIKE 'carol@example.org%'", &[]),
        "inbox_notices": carol_rows("inbox"), "vault_blobs": 1, "feed_entries": carol_rows("feed"),
        "acks": carol_rows("acks"), "groups_with_its_leaves": 0,
    });
    assert_eq!(expected["devices"], 1);
    assert_eq!(admin_json(&component, &["purge-account", "--yes", "carol@example.org"]), expected);
    for table in ["devices", "key_packages", "inbox", "vault", "feed", "acks"] {
        assert_eq!(carol_rows(table), 0, "{table}");
    }
    let alice_account = admin_json(&component, &["account", "alice@example.org"]);
    assert_eq!(alice_account["devices"].as_array().unwrap().len(), 1, "other accounts untouched");
    assert_eq!(admin_json(&component, &["account", "carol@example.org"])["devices"], json!([]));
}

/// A store whose index page is overwritten fails `check` (exit 1), which
/// names the problem: the check is not a constant "ok".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_damaged_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite3");
    let store_config = xmpp_mls::config::StoreConfig { path: path.clone(), ..Default::default() };
    let store = xmpp_mls::store::Store::open(&store_config).unwrap();
    store.close().await;
    let file = sqlite_file(&path);
    let root: i64 = file.one("SELECT rootpage FROM sqlite_master WHERE name = 'devices_by_key'", &[]);
    let page_size: i64 = file.one("PRAGMA page_size", &[]);
    let mut bytes = std::fs::read(&path).unwrap();
    let page = ((root - 1) * page_size) as usize;
    bytes[page..page + page_size as usize].fill(0xff);
    std::fs::write(&path, bytes).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[component]\njid = \"{COMPONENT}\"\nsecret = \"s\"\n[store]\npath = \"{}\"\n", path.display())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xmpp-mls"))
        .args(["admin", "--json", "--config"])
        .arg(&config)
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = report["integrity"].as_array().unwrap_or_else(|| panic!("{report}"));
    assert!(!problems.is_empty() && problems.iter().all(|p| p != "ok"), "{report}");
}
