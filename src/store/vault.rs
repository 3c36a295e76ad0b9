//! The vault: opaque blobs per account, versioned, written by
//! compare-and-swap inside one transaction.

use rusqlite::{params, Connection, OptionalExtension};

use super::{Store, StoreError};
use crate::protocol::mam::Cursor;

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultWrite {
    /// The blob's new version (0 after a delete).
    Done { version: u64 },
    /// The blob is at another version (0: absent).
    Mismatch { current: u64 },
    QuotaExceeded,
    TooManyBlobs,
    NotFound,
}

/// One page of a listing: (name, version, size) of its blobs, the bytes
/// and blobs of the whole vault, and the index of the page's first blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultPage {
    pub items: Vec<(String, u64, usize)>,
    pub used: usize,
    pub count: usize,
    pub first_index: usize,
}

/// Limits of one account's vault.
#[derive(Debug, Clone, Copy)]
pub struct VaultLimits {
    pub quota_bytes: usize,
    pub max_blobs: usize,
}

fn current(c: &Connection, account: &str, name: &str) -> Result<Option<(u64, usize)>, StoreError> {
    Ok(c.query_row(
        "SELECT version, length(data) FROM vault WHERE account = ?1 AND name = ?2",
        params![account, name],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as usize)),
    )
    .optional()?)
}

fn usage(c: &Connection, account: &str) -> Result<(usize, usize), StoreError> {
    Ok(c.query_row(
        "SELECT coalesce(sum(length(data)), 0), count(*) FROM vault WHERE account = ?1",
        [account],
        |r| Ok((r.get::<_, i64>(0)? as usize, r.get::<_, i64>(1)? as usize)),
    )?)
}

impl Store {
    pub async fn vault_put(
        &self,
        account: String,
        name: String,
        if_version: u64,
        data: Vec<u8>,
        limits: VaultLimits,
        now: i64,
    ) -> Result<VaultWrite, StoreError> {
        self.write(move |c| {
            let existing = current(c, &account, &name)?;
            let version = existing.map_or(0, |(v, _)| v);
            if version != if_version {
                return Ok(VaultWrite::Mismatch { current: version });
            }
            let (used, blobs) = usage(c, &account)?;
            let old_size = existing.map_or(0, |(_, s)| s);
            if used - old_size + data.len() > limits.quota_bytes {
                return Ok(VaultWrite::QuotaExceeded);
            }
            if existing.is_none() && blobs >= limits.max_blobs {
                return Ok(VaultWrite::TooManyBlobs);
            }
            c.execute(
                "INSERT INTO vault (account, name, version, data, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (account, name) DO UPDATE SET
                   version = excluded.version, data = excluded.data, updated_at = excluded.updated_at",
                params![account, name, (version + 1) as i64, data, now],
            )?;
            Ok(VaultWrite::Done { version: version + 1 })
        })
        .await
    }

    pub async fn vault_delete(&self, account: String, name: String, if_version: u64) -> Result<VaultWrite, StoreError> {
        self.write(move |c| {
            let Some((version, _)) = current(c, &account, &name)? else { return Ok(VaultWrite::NotFound) };
            if version != if_version {
                return Ok(VaultWrite::Mismatch { current: version });
            }
            c.execute("DELETE FROM vault WHERE account = ?1 AND name = ?2", params![account, name])?;
            Ok(VaultWrite::Done { version: 0 })
        })
        .await
    }

    /// A blob's version and data.
    pub async fn vault_get(&self, account: String, name: String) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT version, data FROM vault WHERE account = ?1 AND name = ?2",
                params![account, name],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()?)
        })
        .await
    }

    /// One page of the account's blobs in name order, from `cursor`.
    pub async fn vault_list(&self, account: String, cursor: Cursor, max: usize) -> Result<VaultPage, StoreError> {
        self.read(move |c| {
            let (after, before, descending) = match &cursor {
                Cursor::First => (None, None, false),
                Cursor::After(name) => (Some(name.as_str()), None, false),
                Cursor::Before(name) => (None, Some(name.as_str()), true),
                Cursor::Last => (None, None, true),
            };
            let order = if descending { "DESC" } else { "ASC" };
            let mut st = c.prepare_cached(&format!(
                "SELECT name, version, length(data) FROM vault
                 WHERE account = ?1 AND (?2 IS NULL OR name > ?2) AND (?3 IS NULL OR name < ?3)
                 ORDER BY name {order} LIMIT ?4"
            ))?;
            let limit = i64::try_from(max).unwrap_or(i64::MAX);
            let rows = st.query_map(params![account, after, before, limit], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as usize))
            })?;
            let mut items: Vec<(String, u64, usize)> = rows.collect::<Result<_, _>>()?;
            if descending {
                items.reverse();
            }
            let first_index = match items.first() {
                Some((name, ..)) => c.query_row(
                    "SELECT count(*) FROM vault WHERE account = ?1 AND name < ?2",
                    params![account, name],
                    |r| r.get::<_, i64>(0),
                )? as usize,
                None => 0,
            };
            let (used, count) = usage(c, &account)?;
            Ok(VaultPage { items, used, count, first_index })
        })
        .await
    }
}
