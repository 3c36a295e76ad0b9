//! The vault: opaque blobs per account, versioned, written by
//! compare-and-swap (one conditional statement per blob) within quotas
//! kept in the account's usage row.

use super::sql::{params, Db};
use super::usage::{charge_vault, free_vault, VaultRefusal};
use super::{undo_refused, Store, StoreError};
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

fn current(c: &Db, account: &str, name: &str) -> Result<Option<(u64, usize)>, StoreError> {
    Ok(c.query_opt(
        "SELECT version, length(data) FROM vault WHERE account = ?1 AND name = ?2",
        params![account, name],
        |r| Ok((r.get::<i64>(0)? as u64, r.get::<i64>(1)? as usize)),
    )?)
}

fn usage(c: &Db, account: &str) -> Result<(usize, usize), StoreError> {
    Ok(c.query_row(
        "SELECT coalesce(sum(length(data)), 0), count(*) FROM vault WHERE account = ?1",
        params![account],
        |r| Ok((r.get::<i64>(0)? as usize, r.get::<i64>(1)? as usize)),
    )?)
}

/// The compare-and-swap of one blob: writes version `if_version + 1` if
/// the blob is at `if_version` with `old_size` octets (0: absent). False:
/// it is not, and nothing was written.
fn swap(c: &Db, account: &str, name: &str, if_version: u64, old_size: usize, data: &[u8], now: i64) -> Result<bool, StoreError> {
    let version = (if_version + 1) as i64;
    let written = if if_version == 0 {
        c.execute(
            "INSERT INTO vault (account, name, version, data, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (account, name) DO NOTHING",
            params![account, name, version, data, now],
        )?
    } else {
        c.execute(
            "UPDATE vault SET version = ?3, data = ?4, updated_at = ?5
             WHERE account = ?1 AND name = ?2 AND version = ?6 AND length(data) = ?7",
            params![account, name, version, data, now, if_version as i64, old_size as i64],
        )?
    };
    Ok(written == 1)
}

impl Store {
    /// Writes a blob if it is at `if_version` (0: absent) and the account's
    /// vault stays within `limits`. The blob's compare-and-swap is one
    /// statement (an UPDATE whose WHERE is the expected version and size,
    /// or an INSERT that does nothing if the name exists); the quota is the
    /// conditional UPDATE of the account's usage row (`account_usage`,
    /// `charge_vault`), not a sum over the vault, because two writers of
    /// different blobs would both pass a sum they read before either wrote.
    /// A refused charge undoes the blob's write.
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
            // The size this write replaces; the swap below checks it is
            // still the stored one, so the charge is exact.
            let (version, old_size) = current(c, &account, &name)?.unwrap_or((0, 0));
            if version != if_version {
                return Ok(VaultWrite::Mismatch { current: version });
            }
            undo_refused(c, || {
                if !swap(c, &account, &name, if_version, old_size, &data, now)? {
                    let current = current(c, &account, &name)?.map_or(0, |(v, _)| v);
                    return Ok(Err(VaultWrite::Mismatch { current }));
                }
                let grown = data.len() as i64 - old_size as i64;
                let new_blob = i64::from(if_version == 0);
                Ok(match charge_vault(c, &account, grown, new_blob, limits.quota_bytes, limits.max_blobs)? {
                    Ok(()) => Ok(VaultWrite::Done { version: if_version + 1 }),
                    Err(VaultRefusal::Quota) => Err(VaultWrite::QuotaExceeded),
                    Err(VaultRefusal::Blobs) => Err(VaultWrite::TooManyBlobs),
                })
            })
        })
        .await
    }

    /// Deletes a blob if it is at `if_version`: one DELETE whose WHERE is
    /// the version; the freed octets and blob leave the account's usage.
    pub async fn vault_delete(&self, account: String, name: String, if_version: u64) -> Result<VaultWrite, StoreError> {
        self.write(move |c| {
            let deleted: Option<i64> = c
                .query_opt(
                    "DELETE FROM vault WHERE account = ?1 AND name = ?2 AND version = ?3 RETURNING length(data)",
                    params![account, name, if_version as i64],
                    |r| r.get(0),
                )?;
            let Some(size) = deleted else {
                return Ok(match current(c, &account, &name)? {
                    None => VaultWrite::NotFound,
                    Some((current, _)) => VaultWrite::Mismatch { current },
                });
            };
            free_vault(c, &account, size)?;
            Ok(VaultWrite::Done { version: 0 })
        })
        .await
    }

    /// A blob's version and data.
    pub async fn vault_get(&self, account: String, name: String) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.read(move |c| {
            Ok(c.query_opt(
                "SELECT version, data FROM vault WHERE account = ?1 AND name = ?2",
                params![account, name],
                |r| Ok((r.get::<i64>(0)? as u64, r.get(1)?)),
            )?)
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
            let limit = i64::try_from(max).unwrap_or(i64::MAX);
            let mut items: Vec<(String, u64, usize)> = c.query_map(
                &format!(
                    "SELECT name, version, length(data) FROM vault
                     WHERE account = ?1 AND (name > ?2 OR ?2 IS NULL) AND (name < ?3 OR ?3 IS NULL)
                     ORDER BY name {order} LIMIT ?4"
                ),
                params![account, after, before, limit],
                |r| Ok((r.get(0)?, r.get::<i64>(1)? as u64, r.get::<i64>(2)? as usize)),
            )?;
            if descending {
                items.reverse();
            }
            let first_index = match items.first() {
                Some((name, ..)) => c.query_row(
                    "SELECT count(*) FROM vault WHERE account = ?1 AND name < ?2",
                    params![account, name],
                    |r| r.get::<i64>(0),
                )? as usize,
                None => 0,
            };
            let (used, count) = usage(c, &account)?;
            Ok(VaultPage { items, used, count, first_index })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;

    const LIMITS: VaultLimits = VaultLimits { quota_bytes: 100, max_blobs: 2 };

    fn alice() -> String {
        "alice@example.org".into()
    }

    async fn put(store: &Store, name: &str, if_version: u64, size: usize) -> VaultWrite {
        store.vault_put(alice(), name.into(), if_version, vec![7; size], LIMITS, 1_000).await.unwrap()
    }

    /// (used octets, blobs) as the listing sums them, and as the usage row counts them.
    async fn usage_both(store: &Store) -> ((usize, usize), (usize, usize)) {
        let page = store.vault_list(alice(), Cursor::First, 10).await.unwrap();
        let row = store
            .read(|c| {
                Ok(c.query_row(
                    "SELECT vault_bytes, vault_blobs FROM account_usage WHERE account = 'alice@example.org'",
                    params![],
                    |r| Ok((r.get::<i64>(0)? as usize, r.get::<i64>(1)? as usize)),
                )?)
            })
            .await
            .unwrap();
        ((page.used, page.count), row)
    }

    #[tokio::test]
    async fn a_stale_version_is_refused_and_changes_nothing() {
        let (_d, store) = temp_store();
        assert_eq!(put(&store, "a", 0, 10).await, VaultWrite::Done { version: 1 });
        assert_eq!(put(&store, "a", 0, 20).await, VaultWrite::Mismatch { current: 1 }, "must not exist");
        assert_eq!(put(&store, "a", 1, 30).await, VaultWrite::Done { version: 2 });
        assert_eq!(put(&store, "a", 1, 40).await, VaultWrite::Mismatch { current: 2 }, "stale");
        assert_eq!(put(&store, "b", 3, 40).await, VaultWrite::Mismatch { current: 0 }, "absent");
        let del = |v| store.vault_delete(alice(), "a".into(), v);
        assert_eq!(del(1).await.unwrap(), VaultWrite::Mismatch { current: 2 });
        assert_eq!(store.vault_get(alice(), "a".into()).await.unwrap(), Some((2, vec![7; 30])));
        assert_eq!(usage_both(&store).await, ((30, 1), (30, 1)));
        assert_eq!(del(2).await.unwrap(), VaultWrite::Done { version: 0 });
        assert_eq!(del(2).await.unwrap(), VaultWrite::NotFound);
        assert_eq!(usage_both(&store).await, ((0, 0), (0, 0)));
    }

    #[tokio::test]
    async fn the_quota_holds_at_its_last_octet_and_blob() {
        let (_d, store) = temp_store();
        assert_eq!(put(&store, "a", 0, 60).await, VaultWrite::Done { version: 1 });
        assert_eq!(put(&store, "b", 0, 41).await, VaultWrite::QuotaExceeded, "one octet over");
        assert_eq!(put(&store, "b", 0, 40).await, VaultWrite::Done { version: 1 }, "exactly at the quota");
        assert_eq!(usage_both(&store).await, ((100, 2), (100, 2)));
        assert_eq!(put(&store, "c", 0, 0).await, VaultWrite::TooManyBlobs, "a third blob");
        assert_eq!(put(&store, "a", 1, 61).await, VaultWrite::QuotaExceeded, "growing one over");
        assert_eq!(store.vault_get(alice(), "a".into()).await.unwrap(), Some((1, vec![7; 60])), "the refused write undone");
        assert_eq!(put(&store, "a", 1, 10).await, VaultWrite::Done { version: 2 }, "shrinking");
        assert_eq!(put(&store, "b", 1, 90).await, VaultWrite::Done { version: 2 }, "replacing within the quota");
        assert_eq!(usage_both(&store).await, ((100, 2), (100, 2)));
    }

    /// Concurrent writers of one version: exactly one wins; of new blobs
    /// against the quota: exactly as many as fit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_pass_each_decision_once() {
        let (_d, store) = temp_store();
        assert_eq!(put(&store, "a", 0, 1).await, VaultWrite::Done { version: 1 });
        let writers: Vec<_> = (0..20)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move { put(&store, "a", 1, 2 + n).await })
            })
            .collect();
        let mut done = 0;
        for w in writers {
            match w.await.unwrap() {
                VaultWrite::Done { version: 2 } => done += 1,
                other => assert_eq!(other, VaultWrite::Mismatch { current: 2 }),
            }
        }
        assert_eq!(done, 1);
        let big = VaultLimits { quota_bytes: 1_000, max_blobs: 100 };
        let creators: Vec<_> = (0..20)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move { store.vault_put(alice(), format!("n{n:02}"), 0, vec![1; 100], big, 1_000).await })
            })
            .collect();
        let mut created = 0;
        for c in creators {
            match c.await.unwrap().unwrap() {
                VaultWrite::Done { version: 1 } => created += 1,
                other => assert_eq!(other, VaultWrite::QuotaExceeded),
            }
        }
        assert_eq!(created, 9, "as many as fit beside blob a (2 to 21 octets)");
        let (summed, counted) = usage_both(&store).await;
        assert_eq!(summed, counted);
        assert_eq!(summed.1, 10);
    }
}
