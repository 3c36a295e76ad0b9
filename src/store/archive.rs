//! History: pages of a group's archive or an account's inbox (XEP-0313
//! queries), who may read which part, and acknowledgements.


use super::sql::{params, Db, Param, Row};

use super::devices::live_devices;
use super::{Store, StoreError};
use crate::protocol::groups::Kind;

/// Which archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Group(Vec<u8>),
    Inbox(String),
}

impl Source {
    fn scope(&self) -> Vec<u8> {
        match self {
            Source::Group(id) => id.clone(),
            Source::Inbox(account) => account.as_bytes().to_vec(),
        }
    }
}

/// The low bits of an archive row's key (`pos`) hold its position in the
/// group's archive, the high bits the group's number (`groups.num`), so
/// that one group's archive is one range of the table's own b-tree.
pub(super) const SEQ_BITS: u32 = 32;

/// The highest position a group's archive can reach.
pub(super) const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;

/// The key of position `seq` in the archive of the group numbered `num`.
pub(super) fn pos(num: i64, seq: u64) -> i64 {
    (num << SEQ_BITS) | seq.min(MAX_SEQ) as i64
}

/// The number of a group (`groups.num`), if the DS follows it.
pub(super) fn group_num(c: &Db, group_id: &[u8]) -> Result<Option<i64>, StoreError> {
    c.query_opt("SELECT num FROM groups WHERE group_id = ?1", params![group_id], |r| r.get(0))
}

/// A kind as stored in `archive.kind`.
pub(super) fn kind_code(kind: Kind) -> i64 {
    match kind {
        Kind::Application => 0,
        Kind::Commit => 1,
        Kind::Proposal => 2,
    }
}

fn kind_name(code: i64) -> &'static str {
    [Kind::Application, Kind::Commit, Kind::Proposal].into_iter().find(|k| kind_code(*k) == code).map_or("", Kind::name)
}

/// Octets of a stanza id: the position (5 octets, big-endian) and a tag
/// that only whoever has the message can compute (xep-mls-delivery
/// §Delivery to the Feed: clients treat stanza ids as opaque).
const ID_SEQ: usize = 5;
const ID_TAG: usize = 7;

fn id_tag(group_id: &[u8], seq: u64, message: &[u8]) -> [u8; ID_TAG] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"xmpp-mls stanza-id");
    h.update((group_id.len() as u64).to_be_bytes());
    h.update(group_id);
    h.update(seq.to_be_bytes());
    h.update(message);
    h.finalize()[..ID_TAG].try_into().expect("a SHA-256 is longer than a tag")
}

/// The stanza id of `message` at position `seq` of a group's archive.
pub fn stanza_id(group_id: &[u8], seq: u64, message: &[u8]) -> String {
    let mut octets = seq.to_be_bytes()[8 - ID_SEQ..].to_vec();
    octets.extend_from_slice(&id_tag(group_id, seq, message));
    crate::protocol::address::group_node(&octets)
}

/// The stanza id of the item at `seq` of the group numbered `num`, which
/// holds `message`: kept in `archive_ids` if migrated, else computed.
pub(super) fn item_stanza_id(c: &Db, group_id: &[u8], num: i64, seq: u64, message: &[u8]) -> Result<String, StoreError> {
    let legacy: Option<String> =
        c.query_opt("SELECT stanza_id FROM archive_ids WHERE pos = ?1", params![pos(num, seq)], |r| r.get(0))?;
    Ok(legacy.unwrap_or_else(|| stanza_id(group_id, seq, message)))
}

/// The position a stanza id names in a group's archive, if it is one of
/// the archive's: the ids of migrated items are kept in `archive_ids`,
/// the others carry their position and are checked against its message.
fn group_position(c: &Db, group_id: &[u8], num: i64, id: &str) -> Result<Option<u64>, StoreError> {
    let legacy: Option<i64> = c.query_opt(
        "SELECT pos FROM archive_ids WHERE stanza_id = ?1 AND pos BETWEEN ?2 AND ?3",
        params![id, pos(num, 0), pos(num, MAX_SEQ)],
        |r| r.get(0),
    )?;
    if let Some(p) = legacy {
        return Ok(Some((p - pos(num, 0)) as u64));
    }
    let Some(octets) = crate::protocol::address::node_octets(id).filter(|o| o.len() == ID_SEQ + ID_TAG) else {
        return Ok(None);
    };
    let seq = octets[..ID_SEQ].iter().fold(0u64, |n, b| n << 8 | u64::from(*b));
    if seq > MAX_SEQ {
        return Ok(None);
    }
    let message: Option<Vec<u8>> =
        c.query_opt("SELECT message FROM archive WHERE pos = ?1", params![pos(num, seq)], |r| r.get(0))?;
    Ok(message.filter(|m| id_tag(group_id, seq, m)[..] == octets[ID_SEQ..]).map(|_| seq))
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

/// A [`Source`] as the store reads it.
enum Scope {
    /// A group's archive: its id, its number, and the positions of the
    /// query's stanza ids (none: any position).
    Group { id: Vec<u8>, num: i64, listed: Vec<u64> },
    Inbox(String),
}

impl Scope {
    /// None for a group the DS does not follow.
    fn of(c: &Db, source: &Source) -> Result<Option<Scope>, StoreError> {
        Ok(match source {
            Source::Group(id) => group_num(c, id)?.map(|num| Scope::Group { id: id.clone(), num, listed: vec![] }),
            Source::Inbox(account) => Some(Scope::Inbox(account.clone())),
        })
    }

    fn table(&self) -> &'static str {
        match self {
            Scope::Group { .. } => "archive",
            Scope::Inbox(_) => "inbox",
        }
    }

    /// The column that orders items.
    fn order(&self) -> &'static str {
        match self {
            Scope::Group { .. } => "pos",
            Scope::Inbox(_) => "seq",
        }
    }
}

/// A WHERE clause and its values.
#[derive(Default)]
struct Where {
    sql: String,
    values: Vec<Box<dyn Param>>,
}

impl Where {
    fn and(&mut self, cond: &str, v: impl Param + 'static) {
        self.and_in(cond, vec![Box::new(v)]);
    }

    /// `cond` with `?` for the list of `values` (which must not be empty).
    fn and_in(&mut self, cond: &str, values: Vec<Box<dyn Param>>) {
        if !self.sql.is_empty() {
            self.sql.push_str(" AND ");
        }
        self.sql.push_str(&cond.replace('?', &vec!["?"; values.len()].join(", ")));
        self.values.extend(values);
    }
}

fn conditions(scope: &Scope, f: &Filter) -> (String, Vec<Box<dyn Param>>) {
    let mut w = Where::default();
    match scope {
        Scope::Group { num, listed, .. } => {
            w.and("pos > ?", pos(*num, f.after_seq.unwrap_or(0)));
            w.and("pos <= ?", pos(*num, f.through_seq.unwrap_or(MAX_SEQ)));
            if !listed.is_empty() {
                w.and_in("pos IN (?)", listed.iter().map(|s| Box::new(pos(*num, *s)) as Box<dyn Param>).collect());
            }
            if let Some(d) = &f.sender_device {
                w.and("sender_device = ?", d.clone());
            }
            // Epochs above i64::MAX exist in no archive (nor in practice): the
            // bounds are clamped, not wrapped to negative numbers.
            if let Some(e) = f.epoch_from {
                w.and("epoch >= ?", i64::try_from(e).unwrap_or(i64::MAX));
            }
            if let Some(e) = f.epoch_to {
                w.and("epoch <= ?", i64::try_from(e).unwrap_or(i64::MAX));
            }
            if !f.kinds.is_empty() {
                let codes = f.kinds.iter().filter_map(|k| Kind::from_name(k)).map(kind_code);
                w.and_in("kind IN (?)", codes.map(|k| Box::new(k) as Box<dyn Param>).collect());
            }
        }
        Scope::Inbox(account) => {
            w.and("account = ?", account.clone());
            if let Some(s) = f.after_seq {
                w.and("seq > ?", s as i64);
            }
            if let Some(s) = f.through_seq {
                w.and("seq <= ?", s as i64);
            }
            if let Some(t) = f.start {
                w.and("created_at >= ?", t);
            }
            if let Some(t) = f.end {
                w.and("created_at <= ?", t);
            }
            if !f.ids.is_empty() {
                w.and_in("stanza_id IN (?)", f.ids.iter().map(|i| Box::new(i.clone()) as Box<dyn Param>).collect());
            }
        }
    }
    (w.sql, w.values)
}

/// A group filter with its time bounds turned into positions (timestamps
/// never decrease along a group's archive), so that pages and counts walk
/// positions only, and the positions of its stanza ids; None if one of
/// these is not in the archive.
fn by_position(c: &Db, group_id: &[u8], num: i64, f: &Filter) -> Result<Option<(Filter, Vec<u64>)>, StoreError> {
    let mut f = f.clone();
    if let Some(t) = f.start.take() {
        let first = first_since(c, num, t)?;
        f.after_seq = Some(f.after_seq.unwrap_or(0).max(first.saturating_sub(1)));
    }
    if let Some(t) = f.end.take() {
        let last = first_since(c, num, t.saturating_add(1))?.saturating_sub(1);
        f.through_seq = Some(f.through_seq.map_or(last, |s| s.min(last)));
    }
    let mut listed = Vec::new();
    for id in std::mem::take(&mut f.ids) {
        match group_position(c, group_id, num, &id)? {
            Some(seq) => listed.push(seq),
            None => return Ok(None),
        }
    }
    Ok(Some((f, listed)))
}

/// The first position of the group numbered `num` whose item arrived at
/// or after `t` (one past the last if none did): a binary search over the
/// positions, which have no holes.
fn first_since(c: &Db, num: i64, t: i64) -> Result<u64, StoreError> {
    let Some((mut lo, mut hi)) = positions_between(c, num, 0, MAX_SEQ)? else { return Ok(1) };
    let at = |seq: u64| -> Result<i64, StoreError> {
        c.query_row("SELECT created_at FROM archive WHERE pos = ?1", params![pos(num, seq)], |r| r.get(0))
    };
    hi += 1;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if at(mid)? < t {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// The first and last position in (after, through] of a group's archive.
fn positions_between(c: &Db, num: i64, after: u64, through: u64) -> Result<Option<(u64, u64)>, StoreError> {
    let (first, last): (Option<i64>, Option<i64>) = c.query_row(
        "SELECT (SELECT min(pos) FROM archive WHERE pos > ?1 AND pos <= ?2),
                (SELECT max(pos) FROM archive WHERE pos > ?1 AND pos <= ?2)",
        params![pos(num, after), pos(num, through)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let base = pos(num, 0);
    Ok(first.zip(last).map(|(f, l)| ((f - base) as u64, (l - base) as u64)))
}

fn columns(scope: &Scope) -> &'static str {
    match scope {
        Scope::Group { .. } => {
            "pos, coalesce((SELECT stanza_id FROM archive_ids i WHERE i.pos = archive.pos), ''), created_at,
             kind, epoch, sender_device, epoch_check, message, ''"
        }
        Scope::Inbox(_) => "seq, stanza_id, created_at, '', 0, '', NULL, NULL, payload",
    }
}

fn item(scope: &Scope, r: &Row) -> Result<Item, StoreError> {
    let mut item = Item {
        seq: r.get::<i64>(0)? as u64,
        stanza_id: r.get(1)?,
        created_at: r.get(2)?,
        kind: String::new(),
        epoch: r.get::<i64>(4)? as u64,
        sender_device: r.get(5)?,
        epoch_check: r.get(6)?,
        message: r.get::<Option<Vec<u8>>>(7)?.unwrap_or_default(),
        payload: r.get(8)?,
    };
    if let Scope::Group { id, num, .. } = scope {
        item.seq -= pos(*num, 0) as u64;
        item.kind = kind_name(r.get(3)?).to_owned();
        if item.stanza_id.is_empty() {
            item.stanza_id = stanza_id(id, item.seq, &item.message);
        }
    }
    Ok(item)
}

/// Items matching `f`.
fn count(c: &Db, scope: &Scope, f: &Filter) -> Result<usize, StoreError> {
    let positions_only = Filter { after_seq: None, through_seq: None, ..f.clone() } == Filter::default();
    if let (Scope::Group { num, listed, .. }, true) = (scope, positions_only) {
        if listed.is_empty() {
            // Two lookups instead of a scan of the range: positions have no
            // holes, since an append takes the next position in its own
            // transaction and retention removes from the oldest end.
            let ends = positions_between(c, *num, f.after_seq.unwrap_or(0), f.through_seq.unwrap_or(MAX_SEQ))?;
            return Ok(ends.map_or(0, |(first, last)| (last - first + 1) as usize));
        }
    }
    let (cond, values) = conditions(scope, f);
    let sql = format!("SELECT count(*) FROM {} WHERE {cond}", scope.table());
    c.query_row(&sql, &values.iter().map(|v| v.as_ref()).collect::<Vec<&dyn Param>>(), |r| r.get(0))
}

fn page(c: &Db, source: &Source, f: &Filter, start: PageStart, max: usize) -> Result<Page, StoreError> {
    let empty = Page { items: vec![], complete: true, count: 0, first_index: 0 };
    let Some(mut scope) = Scope::of(c, source)? else { return Ok(empty) };
    let f = match &mut scope {
        Scope::Group { id, num, listed } => match by_position(c, id, *num, f)? {
            Some((f, positions)) => {
                *listed = positions;
                f
            }
            None => return Ok(empty),
        },
        Scope::Inbox(_) => f.clone(),
    };
    let window = match start {
        PageStart::After(s) => f.after(s),
        PageStart::Before(s) => f.before(s),
        PageStart::First | PageStart::Last => f.clone(),
    };
    let (cond, values) = conditions(&scope, &window);
    let backwards = matches!(start, PageStart::Before(_) | PageStart::Last);
    let order = if backwards { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT {} FROM {} WHERE {cond} ORDER BY {} {order} LIMIT {}",
        columns(&scope),
        scope.table(),
        scope.order(),
        max + 1
    );
    let mut items = c.query_map(&sql, &values.iter().map(|v| v.as_ref()).collect::<Vec<&dyn Param>>(), |r| item(&scope, r))?;
    let complete = items.len() <= max;
    items.truncate(max);
    if backwards {
        items.reverse();
    }
    let first_index = match items.first() {
        Some(first) => count(c, &scope, &f.before(first.seq))?,
        None => 0,
    };
    Ok(Page { items, complete, count: count(c, &scope, &f)?, first_index })
}

impl Store {
    /// Archive positions of stanza ids in `source` (None for unknown ones).
    pub async fn positions(&self, source: Source, ids: Vec<String>) -> Result<Vec<Option<u64>>, StoreError> {
        self.read(move |c| {
            let position = |id: &String| -> Result<Option<u64>, StoreError> {
                match Scope::of(c, &source)? {
                    Some(Scope::Group { id: group_id, num, .. }) => group_position(c, &group_id, num, id),
                    Some(Scope::Inbox(account)) => Ok(c
                        .query_opt("SELECT seq FROM inbox WHERE account = ?1 AND stanza_id = ?2", params![account, id], |r| {
                            r.get::<i64>(0)
                        })?
                        .map(|s| s as u64)),
                    None => Ok(None),
                }
            };
            ids.iter().map(position).collect()
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
            c.query_opt(
                "SELECT joined_seq, left_seq FROM group_accounts WHERE group_id = ?1 AND account = ?2
                 ORDER BY joined_seq DESC LIMIT 1",
                params![group_id, account],
                |r| Ok((r.get::<i64>(0)? as u64, r.get::<Option<i64>>(1)?.map(|s| s as u64))),
            )
        })
        .await
    }

    /// Records that `device` of `account` applied `source` up to `seq`;
    /// for an inbox, deletes what every live device has acknowledged.
    pub async fn acknowledge(&self, source: Source, account: String, device: String, seq: u64, now: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO acks (scope, account, device_id, seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (scope, account, device_id)
                 DO UPDATE SET seq = CASE WHEN excluded.seq > acks.seq THEN excluded.seq ELSE acks.seq END",
                params![source.scope(), account, device, seq as i64],
            )?;
            if let Source::Inbox(owner) = &source {
                let devices = live_devices(c, owner, now)?;
                let mut floor = u64::MAX;
                for d in &devices {
                    let acked: Option<i64> = c.query_opt(
                        "SELECT seq FROM acks WHERE scope = ?1 AND account = ?2 AND device_id = ?3",
                        params![source.scope(), owner, d.id],
                        |r| r.get(0),
                    )?;
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
            let sql = format!(
                "DELETE FROM inbox WHERE seq <= (SELECT min(coalesce(a.seq, 0)) FROM devices d
                   LEFT JOIN acks a ON a.scope = {} AND a.account = d.account AND a.device_id = d.device_id
                   WHERE d.account = inbox.account AND d.expires_at > ?1)",
                c.utf8_octets("d.account")
            );
            let acked = c.execute(&sql, params![now])?;
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

/// Opens and closes the membership intervals of `accounts` (those whose
/// leaves changed) at archive position `seq`: open while the account has
/// a leaf in the group.
pub(super) fn record_membership(c: &Db, group_id: &[u8], accounts: &[String], seq: u64) -> Result<(), StoreError> {
    for account in accounts {
        let has_leaf = c
            .query_opt("SELECT 1 FROM members WHERE group_id = ?1 AND account = ?2 LIMIT 1", params![group_id, account], |r| {
                r.get::<i64>(0)
            })?
            .is_some();
        match has_leaf {
            true => c.execute(
                "INSERT INTO group_accounts (group_id, account, joined_seq) SELECT ?1, ?2, ?3
                 WHERE NOT EXISTS (SELECT 1 FROM group_accounts WHERE group_id = ?1 AND account = ?2 AND left_seq IS NULL)
                 ON CONFLICT DO NOTHING",
                params![group_id, account, seq as i64],
            )?,
            false => c.execute(
                "UPDATE group_accounts SET left_seq = ?3 WHERE group_id = ?1 AND account = ?2 AND left_seq IS NULL",
                params![group_id, account, seq as i64],
            )?,
        };
    }
    Ok(())
}

/// The lowest archive position of the group numbered `num` that
/// retention must keep: an application message younger than `cutoff`, or a
/// handshake that a member device has not acknowledged (or that is younger
/// than `cutoff`). Walks the archive from its oldest end, touching only
/// what retention will remove.
fn first_kept(c: &Db, group_id: &[u8], num: i64, cutoff: i64) -> Result<Option<u64>, StoreError> {
    // Devices whose keys are leaves; one that never acknowledged holds everything.
    let min_ack: i64 = c.query_row(
        "SELECT coalesce(min(coalesce(a.seq, 0)), 0) FROM members m
         JOIN devices d ON d.account = m.account AND d.signature_key = m.signature_key
         LEFT JOIN acks a ON a.scope = m.group_id AND a.account = d.account AND a.device_id = d.device_id
         WHERE m.group_id = ?1",
        params![group_id],
        |r| r.get(0),
    )?;
    let application = kind_code(Kind::Application);
    Ok(c.query_opt(
        "SELECT pos FROM archive WHERE pos > ?1 AND pos <= ?2
           AND (created_at >= ?3 OR (kind <> ?4 AND pos > ?5)) ORDER BY pos LIMIT 1",
        params![pos(num, 0), pos(num, MAX_SEQ), cutoff, application, pos(num, min_ack as u64)],
        |r| r.get::<i64>(0),
    )?
    .map(|p| (p - pos(num, 0)) as u64))
}

/// Deletes the kept trees of epochs older than the first item the archive
/// keeps (at `first`), never the current epoch's: a joiner's Welcome is in
/// the archive with the commit that began the epoch of its tree.
fn prune_trees(c: &Db, group_id: &[u8], first: i64) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM group_trees WHERE group_id = ?1
           AND epoch < coalesce((SELECT epoch FROM archive WHERE pos = ?2), (SELECT epoch FROM groups WHERE group_id = ?1))",
        params![group_id, first],
    )?;
    Ok(())
}

impl Store {
    /// Prunes every group's archive from its oldest end (never leaving a
    /// hole); returns how many items went.
    pub async fn prune_history(&self, cutoff: i64) -> Result<usize, StoreError> {
        self.write(move |c| {
            let groups: Vec<(Vec<u8>, i64, i64)> =
                c.query_map("SELECT group_id, num, seq FROM groups", params![], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            let mut pruned = 0;
            for (group_id, num, last) in groups {
                let keep = first_kept(c, &group_id, num, cutoff)?.unwrap_or(last as u64 + 1);
                let (from, to) = (pos(num, 0), pos(num, keep - 1));
                pruned += c.execute("DELETE FROM archive WHERE pos > ?1 AND pos <= ?2", params![from, to])?;
                c.execute("DELETE FROM archive_ids WHERE pos > ?1 AND pos <= ?2", params![from, to])?;
                c.execute(
                    "UPDATE groups SET pruned_seq = CASE WHEN pruned_seq > ?2 THEN pruned_seq ELSE ?2 END WHERE group_id = ?1",
                    params![group_id, keep as i64 - 1],
                )?;
                prune_trees(c, &group_id, pos(num, keep))?;
            }
            c.execute("DELETE FROM commit_parts WHERE created_at < ?1", params![cutoff])?;
            Ok(pruned)
        })
        .await
    }

    /// How far a group's archive has been pruned (0: never).
    pub async fn pruned_through(&self, group_id: Vec<u8>) -> Result<u64, StoreError> {
        self.read(move |c| {
            Ok(c.query_opt("SELECT pruned_seq FROM groups WHERE group_id = ?1", params![group_id], |r| r.get::<i64>(0))?
                .unwrap_or(0) as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::groups::{Archived, GroupTx};
    use crate::store::tests::temp_store;

    /// Appends an application message to `group` (created if needed) as if
    /// it arrived at `now`.
    async fn append_at(store: &Store, group: &'static [u8], now: i64, message: &'static [u8]) -> Archived {
        store
            .write(move |c| {
                let tx = GroupTx::new(c, group.to_vec(), now);
                if tx.state()?.is_none() {
                    tx.create(0, b"info", &crate::store::state::PublicState::default())?;
                }
                tx.append("alice@example.org", 0, Kind::Application, "laptop", None, message)
            })
            .await
            .unwrap()
    }

    fn seqs(page: &Page) -> Vec<u64> {
        page.items.iter().map(|i| i.seq).collect()
    }

    /// A stanza id names its position in its own group only, and only with
    /// the tag of the message there; pages carry the same ids.
    #[tokio::test]
    async fn stanza_ids_name_positions_and_need_the_message() {
        let (_dir, store) = temp_store();
        let mut ids = vec![];
        for m in [b"one".as_slice(), b"two", b"three"] {
            ids.push(append_at(&store, b"g", 100, m).await.stanza_id);
        }
        let elsewhere = append_at(&store, b"h", 100, b"one").await.stanza_id;
        assert_eq!(ids[0].len(), 20);
        let g = || Source::Group(b"g".to_vec());
        assert_eq!(store.positions(g(), ids.clone()).await.unwrap(), [Some(1), Some(2), Some(3)]);
        let mut forged = crate::protocol::address::node_octets(&ids[2]).unwrap();
        forged[ID_SEQ - 1] = 2; // position 2 with the tag of position 3
        let forged = crate::protocol::address::group_node(&forged);
        let random = crate::store::new_stanza_id();
        let others = vec![forged, elsewhere, random, "not an id".into(), ids[0].to_uppercase()];
        assert_eq!(store.positions(g(), others).await.unwrap(), [None; 5]);
        let page = store.archive_page(g(), Filter::default(), PageStart::First, 10).await.unwrap();
        assert_eq!(page.items.iter().map(|i| i.stanza_id.clone()).collect::<Vec<_>>(), ids);
        assert_eq!(page.items[1].kind, "application");
        let listed = Filter { ids: vec![ids[2].clone(), ids[0].clone()], ..Filter::default() };
        let page = store.archive_page(g(), listed, PageStart::First, 10).await.unwrap();
        assert_eq!((seqs(&page), page.count), (vec![1, 3], 2));
    }

    /// Issue 21: an archived application message (row and resend key)
    /// costs at most 1.2 times its MLS octets, 246 as for a 100-octet chat
    /// line (examples/bench_paths.rs measures the same through the service).
    /// SQLite's pages only: a PostgreSQL row carries a 24-octet header, an
    /// item pointer and its keys' index entries (about 2.3 times here), a
    /// cost scripts/bench reports instead.
    #[tokio::test]
    async fn an_archived_message_costs_at_most_a_fifth_more_than_its_octets() {
        const MESSAGES: usize = 4000;
        const OCTETS: usize = 246;
        let (_dir, store) = temp_store();
        if store.is_postgres() {
            return;
        }
        append_at(&store, b"g", 100, b"first").await;
        let before = store.used_bytes().await.unwrap();
        store
            .write(|c| {
                let tx = GroupTx::new(c, b"g".to_vec(), 100);
                for _ in 0..MESSAGES {
                    let message: [u8; OCTETS] = std::array::from_fn(|_| rand::random());
                    tx.append("alice@example.org", 0, Kind::Application, "a0", None, &message)?;
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let per_message = (store.used_bytes().await.unwrap() - before) as f64 / MESSAGES as f64;
        println!("stored bytes per message: {per_message:.1} ({:.3}x)", per_message / OCTETS as f64);
        assert!(per_message <= 1.2 * OCTETS as f64, "{per_message} octets per message");
    }

    /// Timestamps never decrease along an archive; time filters and
    /// retention find their bounds by position, and MAM positions (after,
    /// before, counts) agree with them.
    #[tokio::test]
    async fn time_filters_and_retention_walk_positions() {
        let (_dir, store) = temp_store();
        for (now, m) in [(100, b"a"), (100, b"b"), (200, b"c"), (300, b"d"), (300, b"e"), (50, b"f")] {
            append_at(&store, b"g", now, m).await;
        }
        let g = || Source::Group(b"g".to_vec());
        let page = |f: Filter, start: PageStart| store.archive_page(g(), f, start, 10);
        let all = page(Filter::default(), PageStart::First).await.unwrap();
        assert_eq!(all.items.iter().map(|i| i.created_at).collect::<Vec<_>>(), [100, 100, 200, 300, 300, 300]);
        let since = |t| Filter { start: Some(t), ..Filter::default() };
        let until = |t| Filter { end: Some(t), ..Filter::default() };
        assert_eq!(seqs(&page(since(200), PageStart::First).await.unwrap()), [3, 4, 5, 6]);
        assert_eq!(seqs(&page(until(200), PageStart::First).await.unwrap()), [1, 2, 3]);
        assert_eq!(seqs(&page(since(301), PageStart::First).await.unwrap()), Vec::<u64>::new());
        assert_eq!(seqs(&page(until(99), PageStart::First).await.unwrap()), Vec::<u64>::new());
        let between = Filter { start: Some(150), end: Some(300), ..Filter::default() };
        let p = page(between.clone(), PageStart::After(3)).await.unwrap();
        assert_eq!((seqs(&p), p.count, p.first_index), (vec![4, 5, 6], 4, 1));
        let p = store.archive_page(g(), between, PageStart::Before(5), 1).await.unwrap();
        assert_eq!((seqs(&p), p.count, p.first_index, p.complete), (vec![4], 4, 1, false));

        let first = store.positions(g(), vec![all.items[0].stanza_id.clone(), all.items[3].stanza_id.clone()]);
        assert_eq!(first.await.unwrap(), [Some(1), Some(4)]);
        assert_eq!(store.prune_history(250).await.unwrap(), 3, "the items before 250 go");
        assert_eq!(store.pruned_through(b"g".to_vec()).await.unwrap(), 3);
        let after = store.positions(g(), vec![all.items[0].stanza_id.clone(), all.items[3].stanza_id.clone()]);
        assert_eq!(after.await.unwrap(), [None, Some(4)]);
        let p = page(Filter::default(), PageStart::First).await.unwrap();
        assert_eq!((seqs(&p), p.count), (vec![4, 5, 6], 3));
        assert_eq!(seqs(&page(until(200), PageStart::First).await.unwrap()), Vec::<u64>::new());
    }

    /// Retention keeps the trees of the epochs the archive still has (a
    /// Welcome there may need its tree), and uploads older than the cutoff go.
    #[tokio::test]
    async fn pruning_keeps_the_trees_of_the_epochs_still_archived() {
        let (_dir, store) = temp_store();
        for (epoch, at) in [(0, 100), (1, 100), (2, 300)] {
            store
                .write(move |c| {
                    let tx = GroupTx::new(c, b"g".to_vec(), at);
                    if tx.state()?.is_none() {
                        tx.create(0, b"info", &crate::store::state::PublicState::default())?;
                    }
                    tx.keep_tree(epoch, &[vec![epoch as u8]])?;
                    tx.append("alice@example.org", epoch, Kind::Application, "laptop", None, b"m")
                })
                .await
                .unwrap();
        }
        let parts = crate::protocol::groups::Parts::of(b"commit");
        let upload = |account: &str| crate::store::Upload { account: account.into(), group_id: b"g".to_vec(), parts };
        store.add_part(upload("old@example.org"), 0, b"commit".to_vec(), 200).await.unwrap();
        store.add_part(upload("new@example.org"), 0, b"commit".to_vec(), 260).await.unwrap();
        assert_eq!(store.prune_history(250).await.unwrap(), 2, "the items of epochs 0 and 1 go");
        let kept = |epoch| store.tree_page(b"g".to_vec(), epoch, 0);
        assert_eq!((kept(0).await.unwrap(), kept(1).await.unwrap()), (None, None));
        assert_eq!(kept(2).await.unwrap(), Some((1, vec![2])), "the tree of the first kept item's epoch");
        assert_eq!(store.uploaded(upload("old@example.org")).await.unwrap(), Vec::<u8>::new());
        assert_eq!(store.uploaded(upload("new@example.org")).await.unwrap(), b"commit");
    }
}
