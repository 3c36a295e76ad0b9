//! The vault: opaque blobs per account, versioned, written by
//! compare-and-swap inside one transaction.

use rusqlite::{params, Connection, OptionalExtension};

use super::{Store, StoreError};

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

    /// (name, version, size) of every blob, and the bytes used.
    pub async fn vault_list(&self, account: String) -> Result<(Vec<(String, u64, usize)>, usize), StoreError> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT name, version, length(data) FROM vault WHERE account = ?1 ORDER BY name",
            )?;
            let rows = st.query_map([&account], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as usize))
            })?;
            let items: Vec<_> = rows.collect::<Result<_, _>>()?;
            Ok((items, usage(c, &account)?.0))
        })
        .await
    }
}
