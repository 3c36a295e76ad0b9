//! History: pages of a group's archive or an account's inbox (XEP-0313
//! queries), who may read which part, and acknowledgements.

use std::collections::HashSet;

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::devices::live_devices;
use super::{Store, StoreError};

/// Which archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Group(Vec<u8>),
    Inbox(String),
}

impl Source {
    fn table(&self) -> (&'static str, &'static str, Value) {
        match self {
            Source::Group(id) => ("archive", "group_id", Value::Blob(id.clone())),
            Source::Inbox(account) => ("inbox", "account", Value::Text(account.clone())),
        }
    }

    fn scope(&self) -> Vec<u8> {
        match self {
            Source::Group(id) => id.clone(),
            Source::Inbox(account) => account.as_bytes().to_vec(),
        }
    }
}

/// Where a page starts, by archive position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStart {
    First,
    After(u64),
    Before(u64),
    Last,
}

/// Conditions on archived items (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Visible positions: (after, up to and including).
    pub after_seq: Option<u64>,
    pub through_seq: Option<u64>,
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub sender_device: Option<String>,
    pub kinds: Vec<&'static str>,
    pub epoch_from: Option<u64>,
    pub epoch_to: Option<u64>,
    pub ids: Vec<String>,
}

impl Filter {
    /// Narrowed to positions after `seq`. Each side keeps one bound, so that
    /// SQLite's index range starts at the page, not at the lower bound.
    fn after(&self, seq: u64) -> Filter {
        Filter { after_seq: Some(self.after_seq.map_or(seq, |a| a.max(seq))), ..self.clone() }
    }

    /// Narrowed to positions before `seq`.
    fn before(&self, seq: u64) -> Filter {
        let last = seq.saturating_sub(1);
        Filter { through_seq: Some(self.through_seq.map_or(last, |t| t.min(last))), ..self.clone() }
    }
}

/// One archived item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub seq: u64,
    pub stanza_id: String,
    pub created_at: i64,
    /// Group archive: kind, epoch, sender device, epoch check, MLSMessage.
    pub kind: String,
    pub epoch: u64,
    pub sender_device: String,
    pub epoch_check: Option<String>,
    pub message: Vec<u8>,
    /// Inbox: the stored payload (XML).
    pub payload: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Item>,
    /// No more items in the direction of paging.
    pub complete: bool,
    /// Items matching the filter, whatever the page.
    pub count: usize,
    /// Position of the page's first item among them.
    pub first_index: usize,
}

fn conditions(source: &Source, f: &Filter) -> (String, Vec<Value>) {
    let (_, key, key_value) = source.table();
    let mut sql = format!("{key} = ?");
    let mut values = vec![key_value];
    let mut add = |cond: &str, v: Value| {
        sql.push_str(" AND ");
        sql.push_str(cond);
        values.push(v);
    };
    if let Some(s) = f.after_seq {
        add("seq > ?", Value::Integer(s as i64));
    }
    if let Some(s) = f.through_seq {
        add("seq <= ?", Value::Integer(s as i64));
    }
    if let Some(t) = f.start {
        add("created_at >= ?", Value::Integer(t));
    }
    if let Some(t) = f.end {
        add("created_at <= ?", Value::Integer(t));
    }
    if matches!(source, Source::Group(_)) {
        if let Some(d) = &f.sender_device {
            add("sender_device = ?", Value::Text(d.clone()));
        }
        // Epochs above i64::MAX exist in no archive (nor in practice): the
        // bounds are clamped, not wrapped to negative numbers.
        if let Some(e) = f.epoch_from {
            add("epoch >= ?", Value::Integer(i64::try_from(e).unwrap_or(i64::MAX)));
        }
        if let Some(e) = f.epoch_to {
            add("epoch <= ?", Value::Integer(i64::try_from(e).unwrap_or(i64::MAX)));
        }
        if !f.kinds.is_empty() {
            let marks = vec!["?"; f.kinds.len()].join(", ");
            sql.push_str(&format!(" AND kind IN ({marks})"));
            values.extend(f.kinds.iter().map(|k| Value::Text(k.to_string())));
        }
    }
    if !f.ids.is_empty() {
        let marks = vec!["?"; f.ids.len()].join(", ");
        sql.push_str(&format!(" AND stanza_id IN ({marks})"));
        values.extend(f.ids.iter().map(|i| Value::Text(i.clone())));
    }
    (sql, values)
}

fn columns(source: &Source) -> &'static str {
    match source {
        Source::Group(_) => "seq, stanza_id, created_at, kind, epoch, sender_device, epoch_check, message, ''",
        Source::Inbox(_) => "seq, stanza_id, created_at, '', 0, '', NULL, x'', payload",
    }
}

fn item(r: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    Ok(Item {
        seq: r.get::<_, i64>(0)? as u64,
        stanza_id: r.get(1)?,
        created_at: r.get(2)?,
        kind: r.get(3)?,
        epoch: r.get::<_, i64>(4)? as u64,
        sender_device: r.get(5)?,
        epoch_check: r.get(6)?,
        message: r.get(7)?,
        payload: r.get(8)?,
    })
}

/// Items of a group's archive at positions in (after, through], counted
/// with two index lookups instead of a scan of the range (which grows with
/// the archive): positions have no holes, since an append takes the next
/// position in its own transaction and retention removes from the oldest end.
fn count_positions(c: &Connection, group_id: &[u8], after: u64, through: Option<u64>) -> Result<usize, StoreError> {
    let through = through.map_or(i64::MAX, |t| i64::try_from(t).unwrap_or(i64::MAX));
    let (first, last): (Option<i64>, Option<i64>) = c.query_row(
        "SELECT (SELECT min(seq) FROM archive WHERE group_id = ?1 AND seq > ?2 AND seq <= ?3),
                (SELECT max(seq) FROM archive WHERE group_id = ?1 AND seq > ?2 AND seq <= ?3)",
        params![group_id, after as i64, through],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(first.zip(last).map_or(0, |(first, last)| (last - first + 1) as usize))
}

/// Items matching `f`.
fn count(c: &Connection, source: &Source, f: &Filter) -> Result<usize, StoreError> {
    let positions_only = Filter { after_seq: None, through_seq: None, ..f.clone() } == Filter::default();
    if let (Source::Group(id), true) = (source, positions_only) {
        return count_positions(c, id, f.after_seq.unwrap_or(0), f.through_seq);
    }
    let (table, ..) = source.table();
    let (cond, values) = conditions(source, f);
    let sql = format!("SELECT count(*) FROM {table} WHERE {cond}");
    Ok(c.query_row(&sql, params_from_iter(values), |r| r.get(0))?)
}

fn page(c: &Connection, source: &Source, f: &Filter, start: PageStart, max: usize) -> Result<Page, StoreError> {
    let (table, ..) = source.table();
    let window = match start {
        PageStart::After(s) => f.after(s),
        PageStart::Before(s) => f.before(s),
        PageStart::First | PageStart::Last => f.clone(),
    };
    let (cond, values) = conditions(source, &window);
    let backwards = matches!(start, PageStart::Before(_) | PageStart::Last);
    let order = if backwards { "DESC" } else { "ASC" };
    let sql = format!("SELECT {} FROM {table} WHERE {cond} ORDER BY seq {order} LIMIT {}", columns(source), max + 1);
    let mut st = c.prepare(&sql)?;
    let mut items: Vec<Item> = st.query_map(params_from_iter(values), item)?.collect::<Result<_, _>>()?;
    let complete = items.len() <= max;
    items.truncate(max);
    if backwards {
        items.reverse();
    }
    let first_index = match items.first() {
        Some(first) => count(c, source, &f.before(first.seq))?,
        None => 0,
    };
    Ok(Page { items, complete, count: count(c, source, f)?, first_index })
}

impl Store {
    /// Archive positions of stanza ids in `source` (None for unknown ones).
    pub async fn positions(&self, source: Source, ids: Vec<String>) -> Result<Vec<Option<u64>>, StoreError> {
        self.read(move |c| {
            let (table, key, key_value) = source.table();
            let sql = format!("SELECT seq FROM {table} WHERE {key} = ?1 AND stanza_id = ?2");
            ids.iter()
                .map(|id| {
                    Ok(c.query_row(&sql, params![key_value, id], |r| r.get::<_, i64>(0))
                        .optional()?
                        .map(|s| s as u64))
                })
                .collect()
        })
        .await
    }

    pub async fn archive_page(&self, source: Source, filter: Filter, start: PageStart, max: usize) -> Result<Page, StoreError> {
        self.read(move |c| page(c, &source, &filter, start, max)).await
    }

    /// First and last item of what `filter` lets one see of `source`.
    pub async fn archive_ends(&self, source: Source, filter: Filter) -> Result<Option<(Item, Item)>, StoreError> {
        self.read(move |c| {
            let first = page(c, &source, &filter, PageStart::First, 1)?.items.pop();
            let last = page(c, &source, &filter, PageStart::Last, 1)?.items.pop();
            Ok(first.zip(last))
        })
        .await
    }

    /// The part of a group's archive `account` may read: (after, through),
    /// from its latest membership; None if it never was a member.
    pub async fn visible_range(&self, group_id: Vec<u8>, account: String) -> Result<Option<(u64, Option<u64>)>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT joined_seq, left_seq FROM group_accounts WHERE group_id = ?1 AND account = ?2
                 ORDER BY joined_seq DESC LIMIT 1",
                params![group_id, account],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?.map(|s| s as u64))),
            )
            .optional()?)
        })
        .await
    }

    /// Records that `device` of `account` applied `source` up to `seq`;
    /// for an inbox, deletes what every live device has acknowledged.
    pub async fn acknowledge(&self, source: Source, account: String, device: String, seq: u64, now: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO acks (scope, account, device_id, seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (scope, account, device_id) DO UPDATE SET seq = max(seq, excluded.seq)",
                params![source.scope(), account, device, seq as i64],
            )?;
            if let Source::Inbox(owner) = &source {
                let devices = live_devices(c, owner, now)?;
                let mut floor = u64::MAX;
                for d in &devices {
                    let acked: Option<i64> = c
                        .query_row(
                            "SELECT seq FROM acks WHERE scope = ?1 AND account = ?2 AND device_id = ?3",
                            params![source.scope(), owner, d.id],
                            |r| r.get(0),
                        )
                        .optional()?;
                    floor = floor.min(acked.unwrap_or(0) as u64);
                }
                if !devices.is_empty() {
                    c.execute("DELETE FROM inbox WHERE account = ?1 AND seq <= ?2", params![owner, floor as i64])?;
                }
            }
            Ok(())
        })
        .await
    }
}

impl Store {
    /// The inbox rule of retention (xep/ §Inbox Retention): deletes, in
    /// every inbox, what every live device of the account has acknowledged
    /// (a device that left holds nothing back), and in the inbox of an
    /// account without a live device, what is older than `cutoff` (no
    /// device will acknowledge it: a Welcome is for earlier devices'
    /// KeyPackages). Returns how many entries went.
    pub async fn prune_inboxes(&self, now: i64, cutoff: i64) -> Result<usize, StoreError> {
        self.write(move |c| {
            let acked = c.execute(
                "DELETE FROM inbox WHERE seq <= (SELECT min(coalesce(a.seq, 0)) FROM devices d
                   LEFT JOIN acks a ON a.scope = CAST(d.account AS BLOB) AND a.account = d.account AND a.device_id = d.device_id
                   WHERE d.account = inbox.account AND d.expires_at > ?1)",
                [now],
            )?;
            let orphaned = c.execute(
                "DELETE FROM inbox WHERE created_at < ?2 AND NOT EXISTS
                   (SELECT 1 FROM devices d WHERE d.account = inbox.account AND d.expires_at > ?1)",
                params![now, cutoff],
            )?;
            Ok(acked + orphaned)
        })
        .await
    }
}

/// Opens and closes accounts' membership intervals after a change of the
/// group's leaves, at archive position `seq`; `accounts` is sorted.
pub(super) fn record_membership(c: &Connection, group_id: &[u8], accounts: &[String], seq: u64) -> Result<(), StoreError> {
    let open: HashSet<String> = {
        let mut st = c.prepare_cached("SELECT account FROM group_accounts WHERE group_id = ?1 AND left_seq IS NULL")?;
        let rows = st.query_map([group_id], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for gone in open.iter().filter(|a| accounts.binary_search(a).is_err()) {
        c.execute(
            "UPDATE group_accounts SET left_seq = ?3 WHERE group_id = ?1 AND account = ?2 AND left_seq IS NULL",
            params![group_id, gone, seq as i64],
        )?;
    }
    for new in accounts.iter().filter(|a| !open.contains(*a)) {
        c.execute(
            "INSERT OR IGNORE INTO group_accounts (group_id, account, joined_seq) VALUES (?1, ?2, ?3)",
            params![group_id, new, seq as i64],
        )?;
    }
    Ok(())
}

/// The lowest archive position of `group_id` that retention must keep: an
/// application message younger than `cutoff`, or a handshake that a member
/// device has not acknowledged (or that is younger than `cutoff`).
fn first_kept(c: &Connection, group_id: &[u8], cutoff: i64) -> Result<Option<u64>, StoreError> {
    // Devices whose keys are leaves; one that never acknowledged holds everything.
    let min_ack: i64 = c.query_row(
        "SELECT coalesce(min(coalesce(a.seq, 0)), 0) FROM members m
         JOIN devices d ON d.account = m.account AND d.signature_key = m.signature_key
         LEFT JOIN acks a ON a.scope = m.group_id AND a.account = d.account AND a.device_id = d.device_id
         WHERE m.group_id = ?1",
        [group_id],
        |r| r.get(0),
    )?;
    Ok(c.query_row(
        "SELECT min(seq) FROM archive WHERE group_id = ?1
           AND (created_at >= ?2 OR (kind <> 'application' AND seq > ?3))",
        params![group_id, cutoff, min_ack],
        |r| r.get::<_, Option<i64>>(0),
    )?
    .map(|s| s as u64))
}

impl Store {
    /// Prunes every group's archive from its oldest end (never leaving a
    /// hole); returns how many items went.
    pub async fn prune_history(&self, cutoff: i64) -> Result<usize, StoreError> {
        self.write(move |c| {
            let groups: Vec<(Vec<u8>, i64)> = {
                let mut st = c.prepare("SELECT group_id, seq FROM groups")?;
                let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut pruned = 0;
            for (group_id, last) in groups {
                let keep = first_kept(c, &group_id, cutoff)?.unwrap_or(last as u64 + 1);
                pruned += c.execute("DELETE FROM archive WHERE group_id = ?1 AND seq < ?2", params![group_id, keep as i64])?;
                c.execute(
                    "UPDATE groups SET pruned_seq = max(pruned_seq, ?2) WHERE group_id = ?1",
                    params![group_id, keep as i64 - 1],
                )?;
            }
            Ok(pruned)
        })
        .await
    }

    /// How far a group's archive has been pruned (0: never).
    pub async fn pruned_through(&self, group_id: Vec<u8>) -> Result<u64, StoreError> {
        self.read(move |c| {
            Ok(c.query_row("SELECT pruned_seq FROM groups WHERE group_id = ?1", [group_id], |r| r.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0) as u64)
        })
        .await
    }
}
