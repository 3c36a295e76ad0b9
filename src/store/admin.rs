//! What operators read and do through `xmpp-mls admin`, and the store's
//! figures for the metrics' gauges (read by the maintenance task). Safe beside a running component:
//! reads see a WAL snapshot, writes queue behind the component's batches.

use std::path::PathBuf;

use super::sql::{params, Db, Param};

use super::archive::{group_num, pos, MAX_SEQ, SEQ_BITS};
use super::groups::forget_joins;
use super::{Store, StoreError};
use crate::metrics::StoreGauges;

/// Totals of the whole store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Accounts with a device list or a vault.
    pub accounts: u64,
    pub devices: u64,
    pub key_packages: u64,
    pub groups: u64,
    pub archive_messages: u64,
    pub inbox_notices: u64,
    pub vault_blobs: u64,
    pub vault_bytes: u64,
    /// The database file's pages (the WAL not included).
    pub database_bytes: u64,
}

/// One group as the Delivery Service holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub group_id: Vec<u8>,
    pub epoch: u64,
    /// Leaves of the ratchet tree.
    pub members: u64,
    pub accounts: u64,
    pub archive_messages: u64,
    /// The last archive position, and how far retention pruned.
    pub last_seq: u64,
    pub pruned_seq: u64,
    pub created_at: i64,
    /// When the newest archived message arrived (the creation if none is left).
    pub last_activity: i64,
}

/// A leaf of a group; `device_id` is None once the account dropped the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDevice {
    pub leaf: u32,
    pub account: String,
    pub device_id: Option<String>,
    /// Whether the device is on the group's live feed.
    pub online: bool,
}

/// A device and its KeyPackage stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStock {
    pub device_id: String,
    pub label: Option<String>,
    pub expires_at: i64,
    /// Unexpired ordinary KeyPackages.
    pub key_packages: u64,
    pub last_resort: bool,
}

/// What the store keeps for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    pub devices: Vec<DeviceStock>,
    /// Groups with a leaf of the account.
    pub groups: Vec<Vec<u8>>,
    pub inbox_notices: u64,
    pub vault_blobs: u64,
    pub vault_bytes: u64,
}

/// Rows deleted by [`Store::purge_account`], by table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgedAccount {
    pub devices: u64,
    pub key_packages: u64,
    pub subscriptions: u64,
    pub inbox_notices: u64,
    pub vault_blobs: u64,
    pub feed_entries: u64,
    pub acks: u64,
}

fn count(c: &Db, sql: &str, p: &[&dyn Param]) -> Result<u64, StoreError> {
    Ok(c.query_row(sql, p, |r| r.get::<i64>(0))? as u64)
}

fn group_summaries(c: &Db, only: Option<&[u8]>) -> Result<Vec<GroupSummary>, StoreError> {
    // The group's archive rows (see archive::pos).
    let rows = format!("FROM archive a WHERE a.pos > g.num << {bits} AND a.pos < (g.num + 1) << {bits}", bits = SEQ_BITS);
    let sql = format!(
        "SELECT g.group_id, g.epoch, g.seq, g.pruned_seq, g.created_at,
                (SELECT count(*) FROM members m WHERE m.group_id = g.group_id),
                (SELECT count(DISTINCT account) FROM members m WHERE m.group_id = g.group_id),
                (SELECT count(*) {rows}),
                (SELECT created_at {rows} ORDER BY pos DESC LIMIT 1)
         FROM groups g WHERE g.group_id = ?1 OR ?1 IS NULL
         ORDER BY g.created_at, g.group_id"
    );
    c.query_map(&sql, params![only], |r| {
        let created_at: i64 = r.get(4)?;
        Ok(GroupSummary {
            group_id: r.get(0)?,
            epoch: r.get::<i64>(1)? as u64,
            last_seq: r.get::<i64>(2)? as u64,
            pruned_seq: r.get::<i64>(3)? as u64,
            created_at,
            members: r.get::<i64>(5)? as u64,
            accounts: r.get::<i64>(6)? as u64,
            archive_messages: r.get::<i64>(7)? as u64,
            last_activity: r.get::<Option<i64>>(8)?.unwrap_or(created_at),
        })
    })
}

fn member_devices(c: &Db, group_id: &[u8]) -> Result<Vec<MemberDevice>, StoreError> {
    c.query_map(
        "SELECT m.leaf, m.account, d.device_id,
                EXISTS (SELECT 1 FROM feed f WHERE f.group_id = m.group_id AND f.account = d.account AND f.device_id = d.device_id)
         FROM members m LEFT JOIN devices d ON d.account = m.account AND d.signature_key = m.signature_key
         WHERE m.group_id = ?1 ORDER BY m.leaf",
        params![group_id],
        |r| Ok(MemberDevice { leaf: r.get(0)?, account: r.get(1)?, device_id: r.get(2)?, online: r.get(3)? }),
    )
}

fn device_stock(c: &Db, account: &str, now: i64) -> Result<Vec<DeviceStock>, StoreError> {
    c.query_map(
        "SELECT d.device_id, d.label, d.expires_at,
                (SELECT count(*) FROM key_packages k
                 WHERE k.account = d.account AND k.device_id = d.device_id AND k.last_resort = 0 AND k.not_after > ?2),
                EXISTS (SELECT 1 FROM key_packages k
                        WHERE k.account = d.account AND k.device_id = d.device_id AND k.last_resort = 1 AND k.not_after > ?2)
         FROM devices d WHERE d.account = ?1 ORDER BY d.published_at, d.device_id",
        params![account, now],
        |r| {
            Ok(DeviceStock {
                device_id: r.get(0)?,
                label: r.get(1)?,
                expires_at: r.get(2)?,
                key_packages: r.get::<i64>(3)? as u64,
                last_resort: r.get(4)?,
            })
        },
    )
}

/// The statement for the database's size in octets.
fn database_size(c: &Db) -> &'static str {
    match c.is_postgres() {
        true => "SELECT pg_database_size(current_database())",
        false => "SELECT p.page_count * s.page_size FROM pragma_page_count() p, pragma_page_size() s",
    }
}

impl Store {
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        self.read(|c| {
            Ok(Stats {
                accounts: count(
                    c,
                    "SELECT count(*) FROM (SELECT account FROM devices UNION SELECT account FROM vault) AS a",
                    params![],
                )?,
                devices: count(c, "SELECT count(*) FROM devices", params![])?,
                key_packages: count(c, "SELECT count(*) FROM key_packages", params![])?,
                groups: count(c, "SELECT count(*) FROM groups", params![])?,
                archive_messages: count(c, "SELECT count(*) FROM archive", params![])?,
                inbox_notices: count(c, "SELECT count(*) FROM inbox", params![])?,
                vault_blobs: count(c, "SELECT count(*) FROM vault", params![])?,
                vault_bytes: count(c, "SELECT coalesce(sum(length(data)), 0) FROM vault", params![])?,
                database_bytes: count(c, database_size(c), params![])?,
            })
        })
        .await
    }

    /// The metrics' gauges that live in the store (`Service::refresh_gauges`).
    pub async fn gauges(&self, low_water: u32, now: i64) -> Result<StoreGauges, StoreError> {
        self.read(move |c| {
            Ok(StoreGauges {
                archive_messages: count(c, "SELECT count(*) FROM archive", params![])?,
                low_key_package_devices: count(
                    c,
                    "SELECT count(*) FROM devices d WHERE d.expires_at > ?1
                       AND (SELECT count(*) FROM key_packages k
                            WHERE k.account = d.account AND k.device_id = d.device_id AND k.last_resort = 0 AND k.not_after > ?1) <= ?2",
                    params![now, low_water],
                )?,
            })
        })
        .await
    }

    /// Every group, oldest first.
    pub async fn group_summaries(&self) -> Result<Vec<GroupSummary>, StoreError> {
        self.read(|c| group_summaries(c, None)).await
    }

    /// One group and its leaves.
    pub async fn group_detail(&self, group_id: Vec<u8>) -> Result<Option<(GroupSummary, Vec<MemberDevice>)>, StoreError> {
        self.read(move |c| {
            let Some(summary) = group_summaries(c, Some(&group_id))?.pop() else { return Ok(None) };
            Ok(Some((summary, member_devices(c, &group_id)?)))
        })
        .await
    }

    pub async fn account_summary(&self, account: String, now: i64) -> Result<AccountSummary, StoreError> {
        self.read(move |c| {
            let groups = c.query_map(
                "SELECT DISTINCT group_id FROM members WHERE account = ?1 ORDER BY group_id",
                params![account],
                |r| r.get(0),
            )?;
            Ok(AccountSummary {
                devices: device_stock(c, &account, now)?,
                groups,
                inbox_notices: count(c, "SELECT count(*) FROM inbox WHERE account = ?1", params![account])?,
                vault_blobs: count(c, "SELECT count(*) FROM vault WHERE account = ?1", params![account])?,
                vault_bytes: count(c, "SELECT coalesce(sum(length(data)), 0) FROM vault WHERE account = ?1", params![account])?,
            })
        })
        .await
    }

    /// Deletes a group: its state, queued proposals, trees, members, archive,
    /// feed, acknowledgements, resend keys and uploads. False if there was no such group.
    pub async fn purge_group(&self, group_id: Vec<u8>) -> Result<bool, StoreError> {
        self.write(move |c| {
            let Some(num) = group_num(c, &group_id)? else { return Ok(false) };
            c.execute("DELETE FROM groups WHERE group_id = ?1", params![group_id])?;
            let (from, to) = (pos(num, 0), pos(num, MAX_SEQ));
            for table in ["archive", "archive_ids"] {
                c.execute(&format!("DELETE FROM {table} WHERE pos > ?1 AND pos <= ?2"), params![from, to])?;
            }
            c.execute("DELETE FROM resends WHERE grp = ?1", params![num])?;
            for table in ["members", "feed", "group_accounts", "service_proposals", "group_proposals", "group_trees", "group_log", "commit_parts"] {
                c.execute(&format!("DELETE FROM {table} WHERE group_id = ?1"), params![group_id])?;
            }
            forget_joins(c, "DELETE FROM group_joins WHERE group_id = ?1 RETURNING account, left_group", &group_id)?;
            c.execute("DELETE FROM acks WHERE scope = ?1", params![group_id])?;
            Ok(true)
        })
        .await
    }

    /// Deletes what the store keeps for an account: devices (with their
    /// KeyPackages), subscriptions by and to it, inbox, vault, feed entries,
    /// acknowledgements and its upload. Its leaves stay in groups' ratchet trees until
    /// a member commits the service's Remove proposals for them.
    pub async fn purge_account(&self, account: String) -> Result<PurgedAccount, StoreError> {
        self.write(move |c| {
            let key_packages = count(c, "SELECT count(*) FROM key_packages WHERE account = ?1", params![account])?;
            let delete = |sql: &str| -> Result<u64, StoreError> { Ok(c.execute(sql, params![account])? as u64) };
            c.execute("DELETE FROM group_joins WHERE account = ?1", params![account])?;
            c.execute("DELETE FROM account_usage WHERE account = ?1", params![account])?;
            c.execute("DELETE FROM commit_parts WHERE account = ?1", params![account])?;
            Ok(PurgedAccount {
                key_packages,
                devices: delete("DELETE FROM devices WHERE account = ?1")?,
                subscriptions: delete(
                    "DELETE FROM subscriptions WHERE account = ?1
                        OR subscriber = ?1 OR substr(subscriber, 1, length(?1) + 1) = ?1 || '/'",
                )?,
                inbox_notices: delete("DELETE FROM inbox WHERE account = ?1")?,
                vault_blobs: delete("DELETE FROM vault WHERE account = ?1")?,
                feed_entries: delete("DELETE FROM feed WHERE account = ?1")?,
                acks: delete("DELETE FROM acks WHERE account = ?1")?,
            })
        })
        .await
    }

    /// The engine's integrity check ("ok" when sound) and the schema
    /// version. SQLite: `PRAGMA integrity_check`. PostgreSQL checks its
    /// pages itself (with data checksums, if the cluster has them): what is
    /// checked here is that the schema is the one this code knows.
    pub async fn integrity(&self) -> Result<(Vec<String>, u32), StoreError> {
        self.read(|c| match c.is_postgres() {
            false => {
                let problems = c.query_map("PRAGMA integrity_check", params![], |r| r.get(0))?;
                let version = c.query_row("PRAGMA user_version", params![], |r| r.get(0))?;
                Ok((problems, version))
            }
            true => {
                let version = super::pg_schema::version(c)?;
                let known = version as usize == super::pg_schema::VERSION;
                let problem = format!("schema version {version}, this program knows {}", super::pg_schema::VERSION);
                Ok((vec![if known { "ok".into() } else { problem }], version))
            }
        })
        .await
    }

    /// A consistent, compacted copy of the database in `path` (which must
    /// not exist), taken while the component may be writing.
    pub async fn backup(&self, path: PathBuf) -> Result<(), StoreError> {
        self.read(move |c| {
            if c.is_postgres() {
                return Err(StoreError::Unsupported("on PostgreSQL, back up with pg_dump or the cluster's own backups"));
            }
            let path = path.to_str().ok_or_else(|| StoreError::Batch("backup path is not UTF-8".into()))?;
            c.execute("VACUUM INTO ?1", params![path])?;
            Ok(())
        })
        .await
    }
}
