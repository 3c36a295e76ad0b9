//! `xmpp-mls admin …`: what an operator needs without reading SQL, on the
//! store named by the config file. Safe while the component runs (SQLite
//! WAL: reads see a snapshot, writes wait for the component's batch).

use std::error::Error;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{json, Map, Value};
use xmpp_mls::config::Config;
use xmpp_mls::protocol::address::{group_node, Address};
use xmpp_mls::protocol::{format_time, now};
use xmpp_mls::store::{GroupSummary, Store};
use xmpp_parsers::jid::{BareJid, Jid};

#[derive(Subcommand)]
pub enum AdminAction {
    /// Totals: accounts, devices, KeyPackages, groups, archive, inboxes,
    /// vault and database size.
    Stats,
    /// Every group: JID, epoch, members, archive size, last activity.
    Groups,
    /// One group: its state and its members.
    Group { jid: BareJid },
    /// An account: its devices with their KeyPackage stock, its groups,
    /// inbox and vault.
    Account { jid: BareJid },
    /// Delete a group: state, members, archive, feed. Its members' clients
    /// get unknown-group from then on.
    PurgeGroup {
        jid: BareJid,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Delete what the service keeps for an account: devices, KeyPackages,
    /// subscriptions, inbox, vault. The component then proposes the
    /// removal of its leaves in every group (at its next maintenance).
    PurgeAccount {
        jid: BareJid,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Run retention now (history.retention_secs, expired devices and
    /// KeyPackages), as the component does every history.maintenance_secs.
    Retention,
    /// Check the database's integrity (SQLite's integrity check) and show the
    /// schema version; exits 1 if the check finds a problem.
    Check,
    /// Write a consistent copy of the store to PATH (which must not exist),
    /// even while the component is writing.
    Backup { path: PathBuf },
    /// Give the service a new external-sender signature key: disco#info
    /// advertises it and new groups must list it; groups that list an
    /// older key keep getting proposals signed with that one.
    RotateExternalSender,
}

/// What a subcommand prints: fields, then tables; as text or JSON.
#[derive(Default)]
struct Report {
    fields: Vec<(&'static str, Value)>,
    tables: Vec<Table>,
}

struct Table {
    name: &'static str,
    columns: &'static [&'static str],
    rows: Vec<Vec<Value>>,
}

impl Report {
    fn field(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.fields.push((name, value.into()));
        self
    }

    fn table(mut self, name: &'static str, columns: &'static [&'static str], rows: Vec<Vec<Value>>) -> Self {
        self.tables.push(Table { name, columns, rows });
        self
    }

    fn to_json(&self) -> Value {
        let mut out: Map<String, Value> = self.fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        for t in &self.tables {
            let rows = t.rows.iter().map(|r| t.columns.iter().map(|c| c.to_string()).zip(r.iter().cloned()).collect());
            out.insert(t.name.to_owned(), Value::Array(rows.map(Value::Object).collect()));
        }
        Value::Object(out)
    }

    fn to_text(&self) -> String {
        let width = self.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out: String = self.fields.iter().map(|(k, v)| format!("{k:width$}  {}\n", text(v))).collect();
        for t in &self.tables {
            if !out.is_empty() {
                out.push_str(&format!("\n{}:\n", t.name));
            }
            let header = t.columns.iter().map(|c| c.replace('_', " ").to_uppercase()).collect();
            let rows: Vec<Vec<String>> =
                std::iter::once(header).chain(t.rows.iter().map(|r| r.iter().map(text).collect())).collect();
            let widths: Vec<usize> =
                (0..t.columns.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
            for row in rows {
                let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:w$}")).collect();
                out.push_str(cells.join("  ").trim_end());
                out.push('\n');
            }
        }
        out
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        v => v.to_string(),
    }
}

/// Runs one subcommand; `Ok(false)` means it ran but the answer is bad
/// (check found a problem, a purge was declined).
pub async fn run(config: &Config, json: bool, action: AdminAction) -> Result<bool, Box<dyn Error>> {
    let path = &config.store.path;
    if config.store.url.is_empty() && !path.exists() {
        return Err(format!("no store at {} (store.path)", path.display()).into());
    }
    let store = Store::open(&config.store)?;
    let result = dispatch(&store, config, action).await;
    store.close().await;
    let (report, ok) = result?;
    match json {
        true => println!("{}", report.to_json()),
        false => print!("{}", report.to_text()),
    }
    Ok(ok)
}

async fn dispatch(store: &Store, config: &Config, action: AdminAction) -> Result<(Report, bool), Box<dyn Error>> {
    let domain = config.component.jid.as_str();
    let report = match action {
        AdminAction::Stats => stats(store).await?,
        AdminAction::Groups => {
            let rows = store.group_summaries().await?.iter().map(|g| group_row(g, domain)).collect();
            Report::default().table("groups", GROUP_COLUMNS, rows)
        }
        AdminAction::Group { jid } => group(store, &jid, domain).await?,
        AdminAction::Account { jid } => account(store, &jid, domain).await?,
        AdminAction::PurgeGroup { jid, yes } => {
            let (summary, _) = store.group_detail(group_id(&jid, domain)?).await?.ok_or("no such group")?;
            let question = format!(
                "Purge group {jid} (epoch {}, {} members, {} archived messages)?",
                summary.epoch, summary.members, summary.archive_messages
            );
            if !(yes || confirm(&question)?) {
                return Ok((Report::default().field("purged", false), false));
            }
            let purged = store.purge_group(summary.group_id).await?;
            Report::default().field("purged", purged).field("group", jid.as_str())
        }
        AdminAction::PurgeAccount { jid, yes } => {
            let account = account_summary(store, &jid).await?;
            let question = format!(
                "Purge account {jid} ({} devices, {} vault blobs, {} inbox notices)?",
                account.devices.len(),
                account.vault_blobs,
                account.inbox_notices
            );
            if !(yes || confirm(&question)?) {
                return Ok((Report::default().field("purged", false), false));
            }
            let p = store.purge_account(jid.to_string()).await?;
            Report::default()
                .field("purged", true)
                .field("account", jid.as_str())
                .field("devices", p.devices)
                .field("key_packages", p.key_packages)
                .field("subscriptions", p.subscriptions)
                .field("inbox_notices", p.inbox_notices)
                .field("vault_blobs", p.vault_blobs)
                .field("feed_entries", p.feed_entries)
                .field("acks", p.acks)
                .field("groups_with_its_leaves", account.groups.len())
        }
        AdminAction::Retention => {
            let (pruned, ..) = xmpp_mls::service::retention(store, config, now()).await?;
            Report::default().field("pruned_messages", pruned).field("archive_messages", store.stats().await?.archive_messages)
        }
        AdminAction::Check => {
            let (problems, version) = store.integrity().await?;
            let ok = problems == ["ok"];
            let report = Report::default().field("integrity", if ok { json!("ok") } else { json!(problems) });
            return Ok((report.field("schema_version", version), ok));
        }
        AdminAction::RotateExternalSender => {
            let key = xmpp_mls::service::new_key();
            store.rotate_service_key(key.clone()).await?;
            let sender = xmpp_mls::service::external_sender_bytes(domain, &key);
            Report::default().field("external_sender", xmpp_mls::protocol::b64_encode(&sender))
        }
        AdminAction::Backup { path } => {
            store.backup(path.clone()).await?;
            let bytes = std::fs::metadata(&path)?.len();
            Report::default().field("backup", path.display().to_string()).field("bytes", bytes)
        }
    };
    Ok((report, true))
}

async fn stats(store: &Store) -> Result<Report, Box<dyn Error>> {
    let s = store.stats().await?;
    Ok(Report::default()
        .field("accounts", s.accounts)
        .field("devices", s.devices)
        .field("key_packages", s.key_packages)
        .field("groups", s.groups)
        .field("archive_messages", s.archive_messages)
        .field("inbox_notices", s.inbox_notices)
        .field("vault_blobs", s.vault_blobs)
        .field("vault_bytes", s.vault_bytes)
        .field("database_bytes", s.database_bytes))
}

const GROUP_COLUMNS: &[&str] = &["jid", "epoch", "members", "accounts", "archive_messages", "last_activity"];

fn group_row(g: &GroupSummary, domain: &str) -> Vec<Value> {
    vec![
        json!(format!("{}@{domain}", group_node(&g.group_id))),
        json!(g.epoch),
        json!(g.members),
        json!(g.accounts),
        json!(g.archive_messages),
        json!(format_time(g.last_activity)),
    ]
}

async fn group(store: &Store, jid: &BareJid, domain: &str) -> Result<Report, Box<dyn Error>> {
    let (g, members) = store.group_detail(group_id(jid, domain)?).await?.ok_or("no such group")?;
    let mut report = Report::default();
    for (column, value) in GROUP_COLUMNS.iter().zip(group_row(&g, domain)) {
        report = report.field(column, value);
    }
    let rows = members
        .into_iter()
        .map(|m| vec![json!(m.leaf), json!(m.account), json!(m.device_id), json!(m.online)])
        .collect();
    Ok(report
        .field("created", format_time(g.created_at))
        .field("last_seq", g.last_seq)
        .field("pruned_through", g.pruned_seq)
        .table("members", &["leaf", "account", "device", "online"], rows))
}

async fn account_summary(store: &Store, jid: &BareJid) -> Result<xmpp_mls::store::AccountSummary, Box<dyn Error>> {
    if jid.node().is_none() {
        return Err(format!("{jid} is not an account (user@domain)").into());
    }
    Ok(store.account_summary(jid.to_string(), now()).await?)
}

async fn account(store: &Store, jid: &BareJid, domain: &str) -> Result<Report, Box<dyn Error>> {
    let a = account_summary(store, jid).await?;
    let devices = a
        .devices
        .iter()
        .map(|d| {
            let expires = format_time(d.expires_at);
            vec![json!(d.device_id), json!(d.label), json!(expires), json!(d.key_packages), json!(d.last_resort)]
        })
        .collect();
    let groups = a.groups.iter().map(|g| vec![json!(format!("{}@{domain}", group_node(g)))]).collect();
    Ok(Report::default()
        .field("account", jid.as_str())
        .field("inbox_notices", a.inbox_notices)
        .field("vault_blobs", a.vault_blobs)
        .field("vault_bytes", a.vault_bytes)
        .table("devices", &["device", "label", "expires", "key_packages", "last_resort"], devices)
        .table("groups", &["jid"], groups))
}

/// The MLS group_id a group JID of this service names.
fn group_id(jid: &BareJid, domain: &str) -> Result<Vec<u8>, Box<dyn Error>> {
    match (jid.domain().as_str() == domain, Address::parse(&Jid::from(jid.clone()))) {
        (true, Ok(Address::Group(id))) => Ok(id),
        _ => Err(format!("{jid} is not a group JID of {domain}").into()),
    }
}

/// Asks on stderr, reads stdin: only "y" or "yes" confirms (EOF declines).
fn confirm(question: &str) -> std::io::Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}
