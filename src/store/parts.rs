//! Commits uploaded in parts (xep/ §Commits in Parts): one upload in
//! progress per account, appended in order.

use super::sql::params;
use super::{Store, StoreError};
use crate::protocol::groups::Parts;

/// The upload of the Commit `parts` names, by `account`, into a group.
#[derive(Debug, Clone)]
pub struct Upload {
    pub account: String,
    pub group_id: Vec<u8>,
    pub parts: Parts,
}

impl Store {
    /// Appends `octets` at `offset` to the account's upload. A part at
    /// offset 0 starts the upload anew, dropping whatever else the account
    /// was uploading; any other is stored only where the upload's parts so
    /// far end. Whether it was stored.
    pub async fn add_part(&self, upload: Upload, offset: u64, octets: Vec<u8>, now: i64) -> Result<bool, StoreError> {
        self.write(move |c| {
            let Upload { account, group_id, parts } = upload;
            let (sha256, size) = (parts.sha256.to_vec(), parts.size as i64);
            if offset == 0 {
                c.execute("DELETE FROM commit_parts WHERE account = ?1", params![account])?;
            } else {
                let received: i64 = c.query_row(
                    "SELECT coalesce(sum(length(octets)), 0) FROM commit_parts
                     WHERE account = ?1 AND group_id = ?2 AND sha256 = ?3 AND size = ?4",
                    params![account, group_id, sha256, size],
                    |r| r.get(0),
                )?;
                if received as u64 != offset {
                    return Ok(false);
                }
            }
            let stored = c.execute(
                "INSERT INTO commit_parts (account, group_id, sha256, size, start, octets, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (account, start) DO NOTHING",
                params![account, group_id, sha256, size, offset as i64, octets, now],
            )?;
            Ok(stored == 1)
        })
        .await
    }

    /// The octets uploaded so far, in order (the whole Commit once every
    /// part came).
    pub async fn uploaded(&self, upload: Upload) -> Result<Vec<u8>, StoreError> {
        self.read(move |c| {
            let Upload { account, group_id, parts } = upload;
            let parts: Vec<Vec<u8>> = c.query_map(
                "SELECT octets FROM commit_parts WHERE account = ?1 AND group_id = ?2 AND sha256 = ?3 AND size = ?4
                 ORDER BY start",
                params![account, group_id, parts.sha256.to_vec(), parts.size as i64],
                |r| r.get(0),
            )?;
            Ok(parts.concat())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;

    #[tokio::test]
    async fn parts_are_stored_in_order_and_a_new_upload_replaces_the_last() {
        let (_scratch, store) = temp_store();
        let commit = b"0123456789".to_vec();
        let upload = |m: &[u8]| Upload { account: "alice@example.org".into(), group_id: b"g".to_vec(), parts: Parts::of(m) };
        assert!(store.add_part(upload(&commit), 0, commit[..4].to_vec(), 1).await.unwrap());
        assert!(!store.add_part(upload(&commit), 8, commit[8..].to_vec(), 1).await.unwrap(), "a gap");
        assert!(!store.add_part(upload(&commit), 2, commit[2..].to_vec(), 1).await.unwrap(), "an overlap");
        assert!(store.add_part(upload(&commit), 4, commit[4..].to_vec(), 1).await.unwrap());
        assert_eq!(store.uploaded(upload(&commit)).await.unwrap(), commit);
        let other = b"abc".to_vec();
        assert!(store.add_part(upload(&other), 0, other.clone(), 2).await.unwrap());
        assert_eq!(store.uploaded(upload(&commit)).await.unwrap(), Vec::<u8>::new(), "replaced");
        assert_eq!(store.uploaded(upload(&other)).await.unwrap(), other);
    }
}
