//! Account-wide limits (`account_usage`, one row per account): the
//! vault's octets and blobs and the groups the account has joined, each
//! counter moved by one conditional UPDATE whose WHERE is the limit, so
//! that concurrent writers cannot both pass it; and the row as the lock
//! of the account's decisions that a counter cannot express.

use super::sql::{params, Db};
use super::StoreError;

/// Creates the account's row if it has none (all counters at 0).
fn ensure(c: &Db, account: &str) -> Result<(), StoreError> {
    c.execute("INSERT INTO account_usage (account) VALUES (?1) ON CONFLICT (account) DO NOTHING", params![account])?;
    Ok(())
}

/// Locks the account's row (creating it if need be) until the transaction
/// ends: an upsert that changes nothing, which takes PostgreSQL's row lock
/// (SQLite's write lock is wider). Decisions that count rows which expire
/// with time (live devices) or are keyed by something a counter cannot
/// follow (subscriptions by bare JID) are taken under this lock.
pub(super) fn lock_account(c: &Db, account: &str) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO account_usage (account) VALUES (?1) ON CONFLICT (account) DO UPDATE SET account = excluded.account",
        params![account],
    )?;
    Ok(())
}

/// Why a vault charge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VaultRefusal {
    Quota,
    Blobs,
}

/// Adds `bytes` octets (negative when a blob shrinks) and `blobs` blobs to the
/// account's vault usage if the octets stay within `quota` and, when
/// `blobs` > 0, the blobs within `max_blobs`: one conditional UPDATE.
pub(super) fn charge_vault(
    c: &Db,
    account: &str,
    bytes: i64,
    blobs: i64,
    quota: usize,
    max_blobs: usize,
) -> Result<Result<(), VaultRefusal>, StoreError> {
    ensure(c, account)?;
    let (quota, max_blobs) = (clamp(quota), clamp(max_blobs));
    let charged = c
        .execute(
            "UPDATE account_usage SET vault_bytes = vault_bytes + ?2, vault_blobs = vault_blobs + ?3
             WHERE account = ?1 AND vault_bytes + ?2 <= ?4 AND (?3 = 0 OR vault_blobs + ?3 <= ?5)",
            params![account, bytes, blobs, quota, max_blobs],
        )?;
    if charged == 1 {
        return Ok(Ok(()));
    }
    // Refused: which limit (the row is not changed, so this only explains).
    let used: i64 = c
        .query_row("SELECT vault_bytes FROM account_usage WHERE account = ?1", params![account], |r| r.get(0))?;
    Ok(Err(if used + bytes > quota { VaultRefusal::Quota } else { VaultRefusal::Blobs }))
}

/// Takes a deleted blob of `bytes` octets off the account's vault usage.
pub(super) fn free_vault(c: &Db, account: &str, bytes: i64) -> Result<(), StoreError> {
    c.execute(
        "UPDATE account_usage SET vault_bytes = vault_bytes - ?2, vault_blobs = vault_blobs - 1 WHERE account = ?1",
        params![account, bytes],
    )?;
    Ok(())
}

/// Counts one more group as joined by `account` if it has joined fewer
/// than `max_groups`: one conditional UPDATE. False: nothing counted.
pub(super) fn count_join(c: &Db, account: &str, max_groups: usize) -> Result<bool, StoreError> {
    ensure(c, account)?;
    let counted = c
        .execute(
            "UPDATE account_usage SET groups = groups + 1 WHERE account = ?1 AND groups < ?2",
            params![account, clamp(max_groups)],
        )?;
    Ok(counted == 1)
}

/// Counts one joined group of `account` less.
pub(super) fn uncount_join(c: &Db, account: &str) -> Result<(), StoreError> {
    c.execute("UPDATE account_usage SET groups = groups - 1 WHERE account = ?1", params![account])?;
    Ok(())
}

fn clamp(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}
