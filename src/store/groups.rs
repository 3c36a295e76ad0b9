//! Groups followed by the Delivery Service: state, members, archive, feed.
//!
//! The service validates a commit or proposal against a snapshot of the
//! group ([`Store::group_snapshot`]) outside the writer, then decides in
//! one write transaction ([`Store::group_tx`]): a compare-and-swap on the
//! group's epoch ([`GroupTx::advance`], [`GroupTx::queue_proposals`])
//! makes exactly one commit win each epoch, and the new state, the archive
//! entry and the Welcomes land with it or not at all.

use std::cell::RefCell;

use minidom::Element;
use super::sql::{params, Db, Row};

use super::devices::live_devices;
use super::archive::{group_num, item_stanza_id, kind_code, pos, stanza_id, MAX_SEQ};
use super::inbox::insert_inbox;
use super::state::{Logged, PublicState};
use super::usage::{count_join, uncount_join};
use super::{undo_refused, Store, StoreError};
use crate::protocol::devices::Device;
use crate::protocol::groups::Kind;

/// The DS's record of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub epoch: u64,
    /// Stanza id of the commit that started the current epoch.
    pub last_commit: Option<String>,
    /// The latest GroupInfo (MLSMessage).
    pub group_info: Vec<u8>,
    /// How many proposals are queued in the epoch: with the epoch, what
    /// identifies a version of the group's public state.
    pub queued: u64,
    /// Octets of the group's state as last written whole, and of the
    /// commits logged since: when to write it whole again.
    pub state_bytes: u64,
    pub log_bytes: u64,
}

/// How a commit's new state is stored (see [`GroupTx::advance`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateWrite<'a> {
    /// The whole state of the new epoch (a blob).
    Whole(&'a [u8]),
    /// The commit, logged after the last whole state.
    Logged(&'a [u8]),
}

/// A leaf of a group, as the DS last merged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub leaf: u32,
    pub account: String,
    pub signature_key: Vec<u8>,
}

/// A device on a group's live feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    pub device_id: String,
    pub full_jid: String,
    pub account: String,
}

/// A device taken off a group's feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departed {
    pub group_id: Vec<u8>,
    pub entry: FeedEntry,
}

/// Whether an account may count a group as joined (see [`GroupTx::join`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    Joined,
    /// The account left the group and has leaves in it still.
    Left,
    /// The account has joined `groups.max_groups_per_account` other groups.
    TooManyGroups,
}

/// SQL: the feed row `f` is of a live device (at `?3`) of its own
/// account whose signature key is a leaf of the group.
const LIVE_LEAF: &str = "EXISTS (SELECT 1 FROM members m JOIN devices d
    ON d.account = m.account AND d.signature_key = m.signature_key
    WHERE m.group_id = f.group_id AND d.account = f.account AND d.device_id = f.device_id AND d.expires_at > ?3)";

/// Takes off the feeds (of one group, of one account's devices, or all)
/// every device that has no live leaf in the group; returns them.
pub(super) fn drop_stale_feed(
    c: &Db,
    group_id: Option<&[u8]>,
    account: Option<&str>,
    now: i64,
) -> Result<Vec<Departed>, StoreError> {
    let sql = format!(
        "DELETE FROM feed AS f WHERE (f.group_id = ?1 OR ?1 IS NULL)
           AND (f.account = ?2 OR ?2 IS NULL) AND NOT {LIVE_LEAF}
         RETURNING group_id, device_id, full_jid, account"
    );
    c.query_map(&sql, params![group_id, account, now], |r| {
        Ok(Departed { group_id: r.get(0)?, entry: FeedEntry { device_id: r.get(1)?, full_jid: r.get(2)?, account: r.get(3)? } })
    })
}

/// A message appended to a group's archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// Position in the group's archive (1, 2, ...): delivery order.
    pub seq: u64,
    pub stanza_id: String,
}

/// What a group message was archived as, remembered for a day or two (see
/// [`resend_key`]) to answer a resend of it (xep/ §Resends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    pub archived: Archived,
    /// The epoch the message was sent in.
    pub epoch: u64,
    pub sender_device: String,
}

/// A message's key in `resends` (xep/ §Resends): the UTC day it was
/// archived in the high bits (the day and the next one are searched, and
/// older days pruned by range) and 48 bits of a SHA-256 of who sent what
/// in the low ones. A match is checked against the archived message.
pub(super) fn resend_key(group_id: &[u8], account: &str, kind: Kind, message: &[u8], day: i64) -> i64 {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"xmpp-mls resend");
    for part in [group_id, account.as_bytes(), kind.name().as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(message);
    let digest = h.finalize();
    let low = digest[..RESEND_HASH_BITS as usize / 8].iter().fold(0i64, |n, b| n << 8 | i64::from(*b));
    day << RESEND_HASH_BITS | low
}

/// Bits of a resend key below its day.
const RESEND_HASH_BITS: u32 = 48;

/// The lowest resend key of the window for `now` (the day before its
/// day): lower keys go.
fn resend_floor(now: i64) -> i64 {
    (now.div_euclid(DAY) - 1) << RESEND_HASH_BITS
}

/// How many octets of MLS messages archives may take in per UTC day
/// (history.*_archive_bytes_per_day).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveBudget {
    pub group_bytes_per_day: u64,
    pub account_bytes_per_day: u64,
}

pub(super) const DAY: i64 = 24 * 3600;

/// Counts `bytes` for (`scope`, `owner`) on `day` if the day's count stays
/// within `limit` (None: no limit): one upsert whose conditions are the
/// limit, for a new row and for the stored one. False: nothing counted.
fn count_archived(c: &Db, scope: &str, owner: &[u8], day: i64, bytes: u64, limit: Option<u64>) -> Result<bool, StoreError> {
    let limit = limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    let counted = c.execute(
        "INSERT INTO archive_bytes (scope, owner, day, bytes) SELECT ?1, ?2, ?3, ?4 WHERE ?4 <= ?5 OR ?5 IS NULL
         ON CONFLICT (scope, owner, day) DO UPDATE SET bytes = archive_bytes.bytes + excluded.bytes
         WHERE archive_bytes.bytes + excluded.bytes <= ?5 OR ?5 IS NULL",
        params![scope, owner, day, bytes as i64, limit],
    )?;
    Ok(counted == 1)
}

/// Deletes the joins that `delete` (one parameter, `owner`; RETURNING
/// account, left_group) chooses, and counts each joined one less.
pub(super) fn forget_joins(c: &Db, delete: &str, owner: &[u8]) -> Result<(), StoreError> {
    let gone: Vec<(String, bool)> = c.query_map(delete, params![owner], |r| Ok((r.get(0)?, r.get(1)?)))?;
    for (account, left) in gone {
        if !left {
            uncount_join(c, &account)?;
        }
    }
    Ok(())
}

/// One group's rows inside a write transaction.
pub struct GroupTx<'c> {
    pub(super) c: &'c Db<'c>,
    pub(super) group_id: Vec<u8>,
    pub(super) now: i64,
    /// The archive positions taken, for delivery in their order.
    appended: RefCell<Vec<u64>>,
}

impl<'c> GroupTx<'c> {
    pub(super) fn new(c: &'c Db<'c>, group_id: Vec<u8>, now: i64) -> Self {
        GroupTx { c, group_id, now, appended: RefCell::default() }
    }

    pub fn now(&self) -> i64 {
        self.now
    }

    pub fn state(&self) -> Result<Option<GroupState>, StoreError> {
        group_state(self.c, &self.group_id)
    }

    pub fn live_devices(&self, account: &str) -> Result<Vec<Device>, StoreError> {
        live_devices(self.c, account, self.now)
    }

    /// Starts following the group at `epoch` with `state` (and the next
    /// group number); false, doing nothing, if a group with this id exists.
    pub fn create(&self, epoch: u64, group_info: &[u8], state: &PublicState) -> Result<bool, StoreError> {
        let num: i64 = self.c.query_row(
            "UPDATE counters SET value = value + 1 WHERE name = 'group_num' RETURNING value",
            params![],
            |r| r.get(0),
        )?;
        let created = self.c.execute(
            "INSERT INTO groups (group_id, created_at, epoch, group_info, state, num, state_epoch, state_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?3, ?7)
             ON CONFLICT (group_id) DO NOTHING",
            params![self.group_id, self.now, epoch as i64, group_info, state.blob, num, state.blob.len() as i64],
        )? == 1;
        if created {
            self.queue_proposals(epoch, &state.proposals)?;
        }
        Ok(created)
    }

    /// Counts `bytes` of a message of `kind` from `account` against today's
    /// archive budgets; false, counting nothing, if they would pass the
    /// account's budget or, for an application message, the group's.
    /// Handshakes are counted but never refused for the group's budget, so
    /// that members can still remove whoever used it up. Each budget is one
    /// conditional upsert (`count_archived`); the group's refusal undoes
    /// the account's count.
    pub fn charge_archive(&self, account: &str, kind: Kind, bytes: usize, budget: ArchiveBudget) -> Result<bool, StoreError> {
        let (day, bytes) = (self.now.div_euclid(DAY), bytes as u64);
        let group_limit = (kind == Kind::Application).then_some(budget.group_bytes_per_day);
        undo_refused(self.c, || {
            let charged = count_archived(self.c, "account", account.as_bytes(), day, bytes, Some(budget.account_bytes_per_day))?
                && count_archived(self.c, "group", &self.group_id, day, bytes, group_limit)?;
            Ok(if charged { Ok(true) } else { Err(false) })
        })
    }

    /// Appends `message` of `account` to the archive and remembers its
    /// acceptance (see [`Self::acceptance`]); returns the message's place
    /// and stanza id. Timestamps never decrease along an archive: an item
    /// is stamped no earlier than the one before it.
    pub fn append(
        &self,
        account: &str,
        epoch: u64,
        kind: Kind,
        sender_device: &str,
        epoch_check: Option<&str>,
        message: &[u8],
    ) -> Result<Archived, StoreError> {
        let (seq, num): (i64, i64) = self.c.query_row(
            "UPDATE groups SET seq = seq + 1 WHERE group_id = ?1 RETURNING seq, num",
            params![self.group_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let seq = seq as u64;
        if seq > MAX_SEQ {
            return Err(StoreError::ArchiveFull);
        }
        self.appended.borrow_mut().push(seq);
        self.c.execute(
            "INSERT INTO archive (pos, epoch, kind, sender_device, epoch_check, message, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6,
               coalesce((SELECT CASE WHEN created_at > ?7 THEN created_at END FROM archive WHERE pos = ?1 - 1), ?7))",
            params![pos(num, seq), epoch as i64, kind_code(kind), sender_device, epoch_check, message, self.now],
        )?;
        let key = resend_key(&self.group_id, account, kind, message, self.now.div_euclid(DAY));
        self.c.execute(
            "INSERT INTO resends (grp, key, seq) VALUES (?1, ?2, ?3) ON CONFLICT (grp, key) DO UPDATE SET seq = excluded.seq",
            params![num, key, seq as i64],
        )?;
        Ok(Archived { seq, stanza_id: stanza_id(&self.group_id, seq, message) })
    }

    /// How `message` (of `kind`) of `account` was archived, if it was
    /// within the resend window: a resend of it is answered with this.
    pub fn acceptance(&self, account: &str, kind: Kind, message: &[u8]) -> Result<Option<Acceptance>, StoreError> {
        acceptance(self.c, &self.group_id, account, kind, message, self.now)
    }

    /// The epoch's compare-and-swap: moves the group from epoch `from` to
    /// `to` with its new GroupInfo, commit id and state; false, changing
    /// nothing, if the group is no longer at `from` (another commit won).
    /// A whole state replaces the log and the proposals of earlier epochs;
    /// a logged commit keeps them (they bring the whole state to `to`).
    pub fn advance(&self, from: u64, to: u64, group_info: &[u8], commit: &str, state: StateWrite<'_>) -> Result<bool, StoreError> {
        let moved = match state {
            StateWrite::Whole(blob) => self.c.execute(
                "UPDATE groups SET epoch = ?3, group_info = ?4, last_commit = ?5, state = ?6, state_epoch = ?3,
                   state_bytes = ?7, log_bytes = 0
                 WHERE group_id = ?1 AND epoch = ?2",
                params![self.group_id, from as i64, to as i64, group_info, commit, blob, blob.len() as i64],
            )?,
            StateWrite::Logged(message) => self.c.execute(
                "UPDATE groups SET epoch = ?3, group_info = ?4, last_commit = ?5, log_bytes = log_bytes + ?6
                 WHERE group_id = ?1 AND epoch = ?2",
                params![self.group_id, from as i64, to as i64, group_info, commit, message.len() as i64],
            )?,
        } == 1;
        match (moved, state) {
            (false, _) => {}
            (true, StateWrite::Whole(_)) => {
                self.c.execute("DELETE FROM group_log WHERE group_id = ?1", params![self.group_id])?;
                self.c.execute("DELETE FROM group_proposals WHERE group_id = ?1 AND epoch < ?2", params![self.group_id, to as i64])?;
            }
            (true, StateWrite::Logged(message)) => {
                self.c.execute(
                    "INSERT INTO group_log (group_id, epoch, message) VALUES (?1, ?2, ?3)",
                    params![self.group_id, from as i64, message],
                )?;
            }
        }
        Ok(moved)
    }

    /// Keeps the ratchet tree of `epoch` in `pages` for joiners to fetch,
    /// unless it is kept already (a tree never changes within its epoch).
    pub fn keep_tree(&self, epoch: u64, pages: &[Vec<u8>]) -> Result<(), StoreError> {
        keep_tree(self.c, &self.group_id, epoch, pages)
    }

    /// Queues proposals (reference, proposal) in `epoch`, if the group is
    /// still at it; false, queuing none, if it is not.
    pub fn queue_proposals(&self, epoch: u64, proposals: &[(Vec<u8>, Vec<u8>)]) -> Result<bool, StoreError> {
        for (reference, proposal) in proposals {
            let queued = self.c.execute(
                "INSERT INTO group_proposals (group_id, epoch, ref, proposal)
                 SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM groups WHERE group_id = ?1 AND epoch = ?2)",
                params![self.group_id, epoch as i64, reference, proposal],
            )?;
            if queued == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Records a change of the group's leaves: `removed` leaves go, then
    /// `changed` ones are written (a removed leaf may be filled again);
    /// `seq` is the archive position of the change (0 at creation), from
    /// which accounts may read the archive. Costs what changed.
    pub fn change_members(&self, removed: &[u32], changed: &[Member], seq: u64) -> Result<(), StoreError> {
        let mut accounts: Vec<String> = changed.iter().map(|m| m.account.clone()).collect();
        for leaf in removed {
            let gone: Option<String> = self.c.query_opt(
                "DELETE FROM members WHERE group_id = ?1 AND leaf = ?2 RETURNING account",
                params![self.group_id, leaf],
                |r| r.get(0),
            )?;
            accounts.extend(gone);
        }
        for m in changed {
            self.c.execute(
                "INSERT INTO members (group_id, leaf, account, signature_key) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (group_id, leaf) DO UPDATE SET account = excluded.account, signature_key = excluded.signature_key",
                params![self.group_id, m.leaf, m.account, m.signature_key],
            )?;
        }
        accounts.sort();
        accounts.dedup();
        super::archive::record_membership(self.c, &self.group_id, &accounts, seq)
    }

    pub fn members(&self) -> Result<Vec<Member>, StoreError> {
        members(self.c, &self.group_id)
    }

    /// Counts this group as joined by `account` (it created the group or
    /// one of its devices joins the feed), unless the account left it or
    /// has joined `max_groups` other groups. The join is an INSERT that
    /// does nothing if the account joined or left before; the limit is the
    /// conditional UPDATE of the account's count (`count_join`), whose
    /// refusal undoes the join.
    pub fn join(&self, account: &str, max_groups: usize) -> Result<Join, StoreError> {
        undo_refused(self.c, || {
            let joined = self.c.execute(
                "INSERT INTO group_joins (group_id, account) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![self.group_id, account],
            )?;
            if joined == 0 {
                let left: bool = self.c.query_row(
                    "SELECT left_group FROM group_joins WHERE group_id = ?1 AND account = ?2",
                    params![self.group_id, account],
                    |r| r.get(0),
                )?;
                return Ok(Ok(if left { Join::Left } else { Join::Joined }));
            }
            Ok(if count_join(self.c, account, max_groups)? { Ok(Join::Joined) } else { Err(Join::TooManyGroups) })
        })
    }

    /// Whether `device_id` of `account` is live and its key a leaf here.
    pub fn has_live_leaf(&self, account: &str, device_id: &str) -> Result<bool, StoreError> {
        self.c.query_row(
            "SELECT EXISTS (SELECT 1 FROM members m JOIN devices d
               ON d.account = m.account AND d.signature_key = m.signature_key
             WHERE m.group_id = ?1 AND d.account = ?2 AND d.device_id = ?3 AND d.expires_at > ?4)",
            params![self.group_id, account, device_id, self.now],
            |r| r.get(0),
        )
    }

    /// The feed entry of `full_jid` if its device still has a live leaf.
    pub fn sender(&self, full_jid: &str) -> Result<Option<FeedEntry>, StoreError> {
        let sql = format!(
            "SELECT device_id, full_jid, account FROM feed AS f
             WHERE f.group_id = ?1 AND f.full_jid = ?2 AND {LIVE_LEAF}"
        );
        self.c.query_opt(&sql, params![self.group_id, full_jid, self.now], feed_row)
    }

    pub fn feed(&self) -> Result<Vec<FeedEntry>, StoreError> {
        feed(self.c, &self.group_id)
    }

    /// Takes devices that no longer have a live leaf off the feed, and
    /// forgets the joins of accounts left without leaves; returns the devices.
    pub fn prune_feed(&self) -> Result<Vec<FeedEntry>, StoreError> {
        forget_joins(
            self.c,
            "DELETE FROM group_joins WHERE group_id = ?1 AND NOT EXISTS (
               SELECT 1 FROM members m WHERE m.group_id = group_joins.group_id AND m.account = group_joins.account)
             RETURNING account, left_group",
            &self.group_id,
        )?;
        let gone = drop_stale_feed(self.c, Some(self.group_id.as_slice()), None, self.now)?;
        Ok(gone.into_iter().map(|d| d.entry).collect())
    }

    /// `account` leaves the group: the group stops counting for it and its
    /// devices leave the feed (returned) until its last leaf is removed.
    /// `None` if the account has no leaf in the group.
    pub fn leave(&self, account: &str) -> Result<Option<Vec<FeedEntry>>, StoreError> {
        if !self.members()?.iter().any(|m| m.account == account) {
            return Ok(None);
        }
        let never_joined = self.c.execute(
            "INSERT INTO group_joins (group_id, account, left_group) VALUES (?1, ?2, 1) ON CONFLICT DO NOTHING",
            params![self.group_id, account],
        )?;
        if never_joined == 0 {
            let was_joined = self.c.execute(
                "UPDATE group_joins SET left_group = 1 WHERE group_id = ?1 AND account = ?2 AND left_group = 0",
                params![self.group_id, account],
            )?;
            if was_joined == 1 {
                uncount_join(self.c, account)?;
            }
        }
        let gone = self.c.query_map(
            "DELETE FROM feed WHERE group_id = ?1 AND account = ?2 RETURNING device_id, full_jid, account",
            params![self.group_id, account],
            feed_row,
        )?;
        Ok(Some(gone))
    }

    /// Keeps `payload` in `account`'s inbox; returns its stanza id.
    pub fn inbox(&self, account: &str, payload: &Element) -> Result<String, StoreError> {
        insert_inbox(self.c, account, payload, self.now)
    }
}

/// How `message` (of `kind`) of `account` was archived in the group, if it
/// was on the day of `now` or the day before and is still in the archive.
fn acceptance(
    c: &Db,
    group_id: &[u8],
    account: &str,
    kind: Kind,
    message: &[u8],
    now: i64,
) -> Result<Option<Acceptance>, StoreError> {
    let Some(num) = group_num(c, group_id)? else { return Ok(None) };
    let day = now.div_euclid(DAY);
    let keys = [day, day - 1].map(|d| resend_key(group_id, account, kind, message, d));
    let seqs: Vec<i64> =
        c.query_map("SELECT seq FROM resends WHERE grp = ?1 AND key IN (?2, ?3)", params![num, keys[0], keys[1]], |r| r.get(0))?;
    for seq in seqs.into_iter().map(|s| s as u64) {
        let found = c.query_opt(
            "SELECT epoch, sender_device FROM archive WHERE pos = ?1 AND kind = ?2 AND message = ?3",
            params![pos(num, seq), kind_code(kind), message],
            |r| Ok((r.get::<i64>(0)?, r.get(1)?)),
        )?;
        if let Some((epoch, sender_device)) = found {
            let archived = Archived { seq, stanza_id: item_stanza_id(c, group_id, num, seq, message)? };
            return Ok(Some(Acceptance { archived, epoch: epoch as u64, sender_device }));
        }
    }
    Ok(None)
}

fn group_state(c: &Db, group_id: &[u8]) -> Result<Option<GroupState>, StoreError> {
    c.query_opt(
        "SELECT epoch, last_commit, group_info,
                (SELECT count(*) FROM group_proposals p WHERE p.group_id = g.group_id AND p.epoch = g.epoch),
                state_bytes, log_bytes
         FROM groups g WHERE group_id = ?1",
        params![group_id],
        |r| {
            Ok(GroupState {
                epoch: r.get::<i64>(0)? as u64,
                last_commit: r.get(1)?,
                group_info: r.get(2)?,
                queued: r.get::<i64>(3)? as u64,
                state_bytes: r.get::<i64>(4)? as u64,
                log_bytes: r.get::<i64>(5)? as u64,
            })
        },
    )
}

/// The group's public state: whole at its `state_epoch`, with the
/// proposals queued then, and each commit since with the proposals of the
/// epoch it began. Queued proposals come in the order of their references:
/// a commit names the proposals it includes, so their order is not
/// significant.
fn public_state(c: &Db, group_id: &[u8]) -> Result<PublicState, StoreError> {
    let (blob, since): (Option<Vec<u8>>, Option<i64>) =
        c.query_row("SELECT state, state_epoch FROM groups WHERE group_id = ?1", params![group_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let proposals = |epoch: i64| {
        c.query_map(
            "SELECT ref, proposal FROM group_proposals WHERE group_id = ?1 AND epoch = ?2 ORDER BY ref",
            params![group_id, epoch],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    };
    let since = since.unwrap_or_default();
    let commits: Vec<(i64, Vec<u8>)> = c.query_map(
        "SELECT epoch, message FROM group_log WHERE group_id = ?1 AND epoch >= ?2 ORDER BY epoch",
        params![group_id, since],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let log = commits
        .into_iter()
        .map(|(epoch, commit)| Ok(Logged { commit, proposals: proposals(epoch + 1)? }))
        .collect::<Result<_, StoreError>>()?;
    Ok(PublicState { blob: blob.unwrap_or_default(), proposals: proposals(since)?, log })
}

fn feed_row(r: &Row) -> Result<FeedEntry, StoreError> {
    Ok(FeedEntry { device_id: r.get(0)?, full_jid: r.get(1)?, account: r.get(2)? })
}

fn keep_tree(c: &Db, group_id: &[u8], epoch: u64, pages: &[Vec<u8>]) -> Result<(), StoreError> {
    for (page, nodes) in pages.iter().enumerate() {
        c.execute(
            "INSERT INTO group_trees (group_id, epoch, page, pages, nodes) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (group_id, epoch, page) DO NOTHING",
            params![group_id, epoch as i64, page as i64, pages.len() as i64, nodes],
        )?;
    }
    Ok(())
}

fn members(c: &Db, group_id: &[u8]) -> Result<Vec<Member>, StoreError> {
    c.query_map("SELECT leaf, account, signature_key FROM members WHERE group_id = ?1 ORDER BY leaf", params![group_id], |r| {
        Ok(Member { leaf: r.get(0)?, account: r.get(1)?, signature_key: r.get(2)? })
    })
}

fn feed(c: &Db, group_id: &[u8]) -> Result<Vec<FeedEntry>, StoreError> {
    c.query_map(
        "SELECT device_id, full_jid, account FROM feed WHERE group_id = ?1 ORDER BY device_id, account",
        params![group_id],
        feed_row,
    )
}

/// What joining a feed did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedJoin {
    Joined { epoch: u64 },
    UnknownGroup,
    /// The device is not live, its key is not a leaf, or its account left.
    NotAMember,
    TooManyGroups,
}

/// What leaving a group did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupLeave {
    /// The devices of the account that were on the feed.
    Left(Vec<FeedEntry>),
    UnknownGroup,
    NotAMember,
}

/// What appending an application message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    Archived { archived: Archived, sender_device: String, feed: Vec<FeedEntry> },
    UnknownGroup,
    /// A resend of a message archived before: nothing was archived again.
    Resent { earlier: Acceptance, feed: Vec<FeedEntry> },
    /// The sending full JID is not on the live feed with a device that
    /// still has a live leaf.
    NotJoined,
    /// The group's or the sender's archive budget of the day is used up.
    OverBudget,
    /// The message's epoch is neither current nor in the window.
    StaleEpoch { current: u64 },
}

impl Store {
    /// Whether the DS follows a group with this MLS group_id.
    pub async fn group_exists(&self, group_id: Vec<u8>) -> Result<bool, StoreError> {
        self.read(move |c| Ok(c.query_opt("SELECT 1 FROM groups WHERE group_id = ?1", params![group_id], |_| Ok(()))?.is_some()))
            .await
    }

    /// Runs `f` on one group inside a write transaction; if `f` fails,
    /// nothing it did is kept. The positions it took are delivered in
    /// their order ([`Self::order`]); an append is never undone alone (no
    /// `undo_refused` around one), so a committed request's positions are
    /// all taken.
    pub async fn group_tx<R, E>(
        &self,
        group_id: Vec<u8>,
        f: impl FnOnce(&GroupTx<'_>) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let now = crate::protocol::now();
        let taking = self.order().taking(&group_id);
        let (out, taken) = self
            .write(move |c| {
                let tx = GroupTx::new(c, group_id, now);
                let out = f(&tx)?;
                Ok::<_, E>((out, tx.appended.into_inner()))
            })
            .await?;
        taking.taken(&taken);
        Ok(out)
    }

    pub async fn group_state(&self, group_id: Vec<u8>) -> Result<Option<GroupState>, StoreError> {
        self.read(move |c| group_state(c, &group_id)).await
    }

    /// How many groups `account` counts as joined
    /// (groups.max_groups_per_account).
    pub async fn joined_groups(&self, account: String) -> Result<u64, StoreError> {
        self.read(move |c| {
            let sql = "SELECT coalesce((SELECT groups FROM account_usage WHERE account = ?1), 0)";
            Ok(c.query_row(sql, params![account], |r| r.get::<i64>(0))? as u64)
        })
        .await
    }

    /// The group's record and public state, read together (one snapshot).
    pub async fn group_snapshot(&self, group_id: Vec<u8>) -> Result<Option<(GroupState, PublicState)>, StoreError> {
        self.read(move |c| {
            c.snapshot(|c| {
                let Some(state) = group_state(c, &group_id)? else { return Ok(None) };
                let public = public_state(c, &group_id)?;
                Ok(Some((state, public)))
            })
        })
        .await
    }

    /// Page `page` of the kept ratchet tree of `epoch`, and how many pages
    /// it has; None if that tree is not kept or has no such page.
    pub async fn tree_page(&self, group_id: Vec<u8>, epoch: u64, page: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.read(move |c| {
            c.query_opt(
                "SELECT pages, nodes FROM group_trees WHERE group_id = ?1 AND epoch = ?2 AND page = ?3",
                params![group_id, epoch as i64, page as i64],
                |r| Ok((r.get::<i64>(0)? as u64, r.get(1)?)),
            )
        })
        .await
    }

    /// Keeps the ratchet tree of `epoch` in `pages` (see [`GroupTx::keep_tree`]).
    pub async fn keep_tree(&self, group_id: Vec<u8>, epoch: u64, pages: Vec<Vec<u8>>) -> Result<(), StoreError> {
        self.write(move |c| keep_tree(c, &group_id, epoch, &pages)).await
    }

    /// The account of the group's leaf `leaf`, if it is a leaf.
    pub async fn member_account(&self, group_id: Vec<u8>, leaf: u32) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            c.query_opt("SELECT account FROM members WHERE group_id = ?1 AND leaf = ?2", params![group_id, leaf], |r| r.get(0))
        })
        .await
    }

    /// Whether `account` has a leaf in the group.
    pub async fn has_member_account(&self, group_id: Vec<u8>, account: String) -> Result<bool, StoreError> {
        self.read(move |c| {
            let sql = "SELECT 1 FROM members WHERE group_id = ?1 AND account = ?2 LIMIT 1";
            Ok(c.query_opt(sql, params![group_id, account], |r| r.get::<i64>(0))?.is_some())
        })
        .await
    }

    /// Archives an application message from `full_jid` (which must be on
    /// the feed with a device that has a live leaf) at `epoch`, if that is the
    /// current epoch or one of the `window` before it, and within the archive
    /// budgets.
    pub async fn append_application(
        &self,
        group_id: Vec<u8>,
        full_jid: String,
        epoch: u64,
        window: u64,
        message: Vec<u8>,
        budget: ArchiveBudget,
    ) -> Result<AppendOutcome, StoreError> {
        self.group_tx(group_id, move |tx| {
            let Some(state) = tx.state()? else { return Ok(AppendOutcome::UnknownGroup) };
            let Some(sender) = tx.sender(&full_jid)? else { return Ok(AppendOutcome::NotJoined) };
            if let Some(earlier) = tx.acceptance(&sender.account, Kind::Application, &message)? {
                return Ok(AppendOutcome::Resent { earlier, feed: tx.feed()? });
            }
            if epoch > state.epoch || epoch + window < state.epoch {
                return Ok(AppendOutcome::StaleEpoch { current: state.epoch });
            }
            if !tx.charge_archive(&sender.account, Kind::Application, message.len(), budget)? {
                return Ok(AppendOutcome::OverBudget);
            }
            let archived = tx.append(&sender.account, epoch, Kind::Application, &sender.device_id, None, &message)?;
            Ok(AppendOutcome::Archived { archived, sender_device: sender.device_id, feed: tx.feed()? })
        })
        .await
    }

    /// Puts a device of `entry.account` with a live leaf on a group's feed
    /// (replacing its previous full JID), counting the group as joined by
    /// the account (at most `max_groups`).
    pub async fn join_feed(&self, group_id: Vec<u8>, entry: FeedEntry, max_groups: usize) -> Result<FeedJoin, StoreError> {
        self.group_tx(group_id, move |tx| {
            let Some(state) = tx.state()? else { return Ok(FeedJoin::UnknownGroup) };
            if !tx.has_live_leaf(&entry.account, &entry.device_id)? {
                return Ok(FeedJoin::NotAMember);
            }
            match tx.join(&entry.account, max_groups)? {
                Join::Joined => {}
                Join::Left => return Ok(FeedJoin::NotAMember),
                Join::TooManyGroups => return Ok(FeedJoin::TooManyGroups),
            }
            tx.c.execute(
                "INSERT INTO feed (group_id, account, device_id, full_jid) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (group_id, account, device_id) DO UPDATE SET full_jid = excluded.full_jid",
                params![tx.group_id, entry.account, entry.device_id, entry.full_jid],
            )?;
            Ok(FeedJoin::Joined { epoch: state.epoch })
        })
        .await
    }

    /// How `message` (of `kind`) of `account` was archived in the group, if
    /// it was within the resend window (a read, before any validation).
    pub async fn acceptance(
        &self,
        group_id: Vec<u8>,
        account: String,
        kind: Kind,
        message: Vec<u8>,
    ) -> Result<Option<Acceptance>, StoreError> {
        let now = crate::protocol::now();
        self.read(move |c| acceptance(c, &group_id, &account, kind, &message, now)).await
    }

    /// Forgets what was archived before the day before `now`'s for resends.
    pub async fn prune_acceptances(&self, now: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            let groups: Vec<i64> = c.query_map("SELECT num FROM groups", params![], |r| r.get(0))?;
            for num in groups {
                c.execute("DELETE FROM resends WHERE grp = ?1 AND key < ?2", params![num, resend_floor(now)])?;
            }
            Ok(())
        })
        .await
    }

    /// Forgets archive budget counts of days before `now`'s.
    pub async fn prune_archive_budgets(&self, now: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute("DELETE FROM archive_bytes WHERE day < ?1", params![now.div_euclid(DAY)])?;
            Ok(())
        })
        .await
    }

    /// Whether `full_jid` is on the group's feed (a read: leaving a feed one
    /// is not on costs no write).
    pub async fn on_feed(&self, group_id: Vec<u8>, full_jid: String) -> Result<bool, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM feed WHERE group_id = ?1 AND full_jid = ?2)",
                params![group_id, full_jid],
                |r| r.get(0),
            )
        })
        .await
    }

    /// `account` leaves the group (see [`GroupTx::leave`]).
    pub async fn leave_group(&self, group_id: Vec<u8>, account: String) -> Result<GroupLeave, StoreError> {
        self.group_tx(group_id, move |tx| {
            if tx.state()?.is_none() {
                return Ok(GroupLeave::UnknownGroup);
            }
            Ok(tx.leave(&account)?.map_or(GroupLeave::NotAMember, GroupLeave::Left))
        })
        .await
    }

    /// Takes `full_jid` off every feed (or one group's); returns the groups.
    pub async fn leave_feed(&self, group_id: Option<Vec<u8>>, full_jid: String) -> Result<usize, StoreError> {
        self.write(move |c| {
            c.execute("DELETE FROM feed WHERE full_jid = ?1 AND (group_id = ?2 OR ?2 IS NULL)", params![full_jid, group_id])
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;

    const A: &str = "alice@example.org";

    /// (groups counted for A, A's joins not left).
    async fn joined(store: &Store) -> (i64, i64) {
        store
            .read(|c| {
                let counted = c.query_row("SELECT groups FROM account_usage WHERE account = ?1", params![A], |r| r.get(0))?;
                let rows = c.query_row(
                    "SELECT count(*) FROM group_joins WHERE account = ?1 AND left_group = 0",
                    params![A],
                    |r| r.get(0),
                )?;
                Ok((counted, rows))
            })
            .await
            .unwrap()
    }

    async fn join(store: &Store, group: &str, max: usize) -> Join {
        store
            .group_tx(group.as_bytes().to_vec(), move |tx| {
                if tx.state()?.is_none() {
                    tx.create(0, b"info", &PublicState::default())?;
                }
                tx.join(A, max)
            })
            .await
            .unwrap()
    }

    /// Appends `message` of `account` to group "g" (created if needed).
    async fn append(store: &Store, account: &'static str, message: &'static [u8]) -> Archived {
        store
            .group_tx(b"g".to_vec(), move |tx| {
                if tx.state()?.is_none() {
                    tx.create(0, b"info", &PublicState::default())?;
                }
                tx.append(account, 0, Kind::Application, "laptop", None, message)
            })
            .await
            .unwrap()
    }

    /// The group limit holds at its last group; leaving, a pruned join and
    /// a purged group each free one, and the count follows the joins.
    #[tokio::test]
    async fn joins_stop_at_the_group_limit_and_free_on_leaving() {
        let (_dir, store) = temp_store();
        for g in ["g1", "g2", "g3"] {
            assert_eq!(join(&store, g, 3).await, Join::Joined);
        }
        assert_eq!(join(&store, "g4", 3).await, Join::TooManyGroups, "one over");
        assert_eq!(join(&store, "g1", 3).await, Join::Joined, "joined already: not counted again");
        assert_eq!(joined(&store).await, (3, 3), "the refused join left no row");
        let member = Member { leaf: 0, account: A.into(), signature_key: vec![1; 32] };
        let left = store
            .group_tx(b"g1".to_vec(), move |tx| {
                tx.change_members(&[], &[member], 0)?;
                tx.leave(A)?;
                tx.leave(A)
            })
            .await
            .unwrap();
        assert_eq!(left, Some(vec![]));
        assert_eq!(joined(&store).await, (2, 2), "left once, counted once");
        assert_eq!(join(&store, "g1", 3).await, Join::Left);
        assert_eq!(join(&store, "g4", 3).await, Join::Joined);
        store.group_tx(b"g2".to_vec(), |tx| tx.prune_feed()).await.unwrap();
        assert_eq!(joined(&store).await, (2, 2), "no leaf of A in g2: its join forgotten");
        assert!(store.purge_group(b"g3".to_vec()).await.unwrap());
        assert_eq!(joined(&store).await, (1, 1));
    }

    /// Each budget holds at its last octet; a refusal by the group's
    /// budget leaves the account's count as it was; handshakes pass the
    /// group's budget.
    #[tokio::test]
    async fn archive_budgets_hold_at_their_last_octet() {
        let (_dir, store) = temp_store();
        let budget = ArchiveBudget { group_bytes_per_day: 150, account_bytes_per_day: 100 };
        let charge = |account: &'static str, kind: Kind, bytes: usize| {
            store.group_tx(b"g".to_vec(), move |tx| tx.charge_archive(account, kind, bytes, budget))
        };
        let counts = || {
            store.read(|c| {
                c.query_map("SELECT scope, bytes FROM archive_bytes ORDER BY scope, owner", params![], |r| {
                    Ok((r.get::<String>(0)?, r.get::<i64>(1)?))
                })
            })
        };
        assert!(!charge(A, Kind::Application, 101).await.unwrap(), "over the account's budget at once");
        assert!(charge(A, Kind::Application, 100).await.unwrap(), "exactly the account's budget");
        assert!(!charge(A, Kind::Application, 1).await.unwrap(), "one octet over");
        assert!(charge("bob@example.org", Kind::Application, 50).await.unwrap(), "exactly the group's budget");
        assert!(!charge("bob@example.org", Kind::Application, 1).await.unwrap(), "one octet over the group's");
        let expected = |group| vec![("account".into(), 100), ("account".into(), 50), ("group".into(), group)];
        assert_eq!(counts().await.unwrap(), expected(150), "refusals counted nothing");
        assert!(charge("bob@example.org", Kind::Commit, 10).await.unwrap(), "a handshake passes the group's budget");
        let mut after = expected(160);
        after[1].1 = 60;
        assert_eq!(counts().await.unwrap(), after);
    }

    /// An archived message is remembered per (group, account, kind, octets)
    /// on the day it was archived and the next; the same octets from another
    /// account are a new message, with their own position and stanza id.
    #[tokio::test]
    async fn acceptances_answer_resends_of_the_same_account_for_a_day() {
        let (_dir, store) = temp_store();
        let archived = append(&store, "alice@example.org", b"ciphertext").await;
        let lookup =
            |account: &str, message: &[u8]| store.acceptance(b"g".to_vec(), account.into(), Kind::Application, message.to_vec());
        let expected = Acceptance { archived: archived.clone(), epoch: 0, sender_device: "laptop".into() };
        assert_eq!(lookup("alice@example.org", b"ciphertext").await.unwrap(), Some(expected.clone()));
        assert_eq!(lookup("mallory@example.org", b"ciphertext").await.unwrap(), None);
        assert_eq!(lookup("alice@example.org", b"other").await.unwrap(), None);
        let as_commit = store.acceptance(b"g".to_vec(), "alice@example.org".into(), Kind::Commit, b"ciphertext".to_vec());
        assert_eq!(as_commit.await.unwrap(), None, "a resend is of the same kind");

        let replayed = append(&store, "mallory@example.org", b"ciphertext").await;
        assert_eq!(replayed.seq, 2);
        assert_ne!(replayed.stanza_id, archived.stanza_id);
        let mallory = lookup("mallory@example.org", b"ciphertext").await.unwrap();
        assert_eq!(mallory.map(|a| a.archived), Some(replayed));
        assert_eq!(lookup("alice@example.org", b"ciphertext").await.unwrap(), Some(expected.clone()));

        let now = crate::protocol::now();
        let at = |t: i64| {
            store.read(move |c| acceptance(c, b"g", "alice@example.org", Kind::Application, b"ciphertext", t))
        };
        assert_eq!(at(now + DAY).await.unwrap(), Some(expected), "found the next day");
        assert_eq!(at(now + 2 * DAY).await.unwrap(), None, "not two days later");
        store.prune_acceptances(now + DAY).await.unwrap();
        assert!(lookup("alice@example.org", b"ciphertext").await.unwrap().is_some(), "kept the next day");
        store.prune_acceptances(now + 2 * DAY).await.unwrap();
        assert_eq!(lookup("alice@example.org", b"ciphertext").await.unwrap(), None);
        let keys: i64 = store.read(|c| c.query_row("SELECT count(*) FROM resends", params![], |r| r.get(0))).await.unwrap();
        assert_eq!(keys, 0, "pruned");
    }

    /// The epoch's compare-and-swap: of two moves from one epoch, the
    /// second changes nothing, whatever it carries.
    #[tokio::test]
    async fn an_epoch_is_left_once() {
        let (_dir, store) = temp_store();
        let advance = |blob: &'static [u8]| {
            store.group_tx(b"g".to_vec(), move |tx| {
                if tx.state()?.is_none() {
                    tx.create(1, b"info-1", &PublicState::default())?;
                    tx.queue_proposals(1, &[(b"ref".to_vec(), b"proposal".to_vec())])?;
                }
                tx.advance(1, 2, b"info-2", "commit", StateWrite::Whole(blob))
            })
        };
        assert!(advance(b"first").await.unwrap());
        assert!(!advance(b"second").await.unwrap(), "the group left epoch 1 already");
        let (state, public) = store.group_snapshot(b"g".to_vec()).await.unwrap().unwrap();
        assert_eq!((state.epoch, state.last_commit.as_deref(), state.group_info.as_slice()), (2, Some("commit"), &b"info-2"[..]));
        assert_eq!((state.state_bytes, state.log_bytes), (5, 0));
        assert_eq!(public, PublicState { blob: b"first".to_vec(), ..PublicState::default() }, "epoch 1's queue is gone");
        let late = store.group_tx(b"g".to_vec(), |tx| tx.queue_proposals(1, &[(b"r2".to_vec(), b"p2".to_vec())]));
        assert!(!late.await.unwrap(), "no proposal is queued for an epoch the group left");
    }

    /// Logged commits keep the whole state, the log and the proposals of
    /// every epoch since; the next whole state replaces them all.
    #[tokio::test]
    async fn commits_are_logged_after_the_whole_state_until_the_next() {
        let (_dir, store) = temp_store();
        let step = |from: u64, proposal: &'static [u8], state: StateWrite<'static>| {
            store.group_tx(b"g".to_vec(), move |tx| {
                if tx.state()?.is_none() {
                    tx.create(1, b"info", &PublicState { blob: b"whole-1".to_vec(), ..PublicState::default() })?;
                }
                tx.queue_proposals(from, &[(proposal.to_vec(), proposal.to_vec())])?;
                tx.advance(from, from + 1, b"info", "c", state)
            })
        };
        assert!(step(1, b"p1", StateWrite::Logged(b"commit-1")).await.unwrap());
        assert!(step(2, b"p2", StateWrite::Logged(b"commit-22")).await.unwrap());
        store.group_tx(b"g".to_vec(), |tx| tx.queue_proposals(3, &[(b"p3".to_vec(), b"p3".to_vec())])).await.unwrap();
        let (state, public) = store.group_snapshot(b"g".to_vec()).await.unwrap().unwrap();
        assert_eq!((state.epoch, state.queued, state.state_bytes, state.log_bytes), (3, 1, 7, 17));
        let queued = |p: &[u8]| vec![(p.to_vec(), p.to_vec())];
        let log = vec![
            Logged { commit: b"commit-1".to_vec(), proposals: queued(b"p2") },
            Logged { commit: b"commit-22".to_vec(), proposals: queued(b"p3") },
        ];
        assert_eq!(public, PublicState { blob: b"whole-1".to_vec(), proposals: queued(b"p1"), log });
        assert!(step(3, b"p3b", StateWrite::Whole(b"whole-4")).await.unwrap());
        let (state, public) = store.group_snapshot(b"g".to_vec()).await.unwrap().unwrap();
        assert_eq!((state.epoch, state.state_bytes, state.log_bytes), (4, 7, 0));
        assert_eq!(public, PublicState { blob: b"whole-4".to_vec(), ..PublicState::default() });
    }
}