//! The service as an MLS external sender (xep/ §Service Removals): its
//! signature keys and the Remove proposals it issued.

use super::groups::GroupTx;
use super::sql::{params, Db};
use super::{Store, StoreError};

/// One of the service's Ed25519 signature keys, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceKey {
    pub private: Vec<u8>,
    pub public: Vec<u8>,
}

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceKey").field("public", &self.public).finish_non_exhaustive()
    }
}

/// The service's keys, newest (current) first.
fn service_keys(c: &Db) -> Result<Vec<ServiceKey>, StoreError> {
    c.query_map(
        "SELECT private, public FROM service_keys ORDER BY id DESC",
        params![],
        |r| Ok(ServiceKey { private: r.get(0)?, public: r.get(1)? }),
    )
}

fn add_key(c: &Db, key: &ServiceKey, now: i64) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO service_keys (id, private, public, created_at)
         VALUES ((SELECT coalesce(max(id), 0) + 1 FROM service_keys), ?1, ?2, ?3)",
        params![key.private, key.public, now],
    )?;
    Ok(())
}

impl Store {
    /// The service's keys, newest (current) first.
    pub async fn service_keys(&self) -> Result<Vec<ServiceKey>, StoreError> {
        self.read(service_keys).await
    }

    /// Stores `key` if the service has none yet (its first start); the
    /// current key either way. The first key is key 1: its INSERT does
    /// nothing if a key 1 exists, so two first starts store one key.
    pub async fn ensure_service_key(&self, key: ServiceKey) -> Result<ServiceKey, StoreError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO service_keys (id, private, public, created_at) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO NOTHING",
                params![key.private, key.public, crate::protocol::now()],
            )?;
            service_keys(c)?.into_iter().next().ok_or_else(|| StoreError::Batch("no service key after storing one".into()))
        })
        .await
    }

    /// Makes `key` the current key; the older ones stay for the groups
    /// that list them.
    pub async fn rotate_service_key(&self, key: ServiceKey) -> Result<(), StoreError> {
        self.write(move |c| add_key(c, &key, crate::protocol::now())).await
    }

    /// Groups (of `account`'s leaves, or all) with a leaf whose signature
    /// key is not a live device of its account.
    pub async fn groups_with_stale_leaves(&self, account: Option<String>, now: i64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read(move |c| {
            c.query_map(
                "SELECT DISTINCT m.group_id FROM members m
                 WHERE (m.account = ?1 OR ?1 IS NULL) AND NOT EXISTS (SELECT 1 FROM devices d
                   WHERE d.account = m.account AND d.signature_key = m.signature_key AND d.expires_at > ?2)
                 ORDER BY m.group_id",
                params![account, now],
                |r| r.get(0),
            )
        })
        .await
    }
}

impl GroupTx<'_> {
    pub fn service_keys(&self) -> Result<Vec<ServiceKey>, StoreError> {
        service_keys(self.c)
    }

    /// Leaves of the group whose signature key is not a live device of
    /// their account and for which no service proposal of `epoch` exists.
    pub fn stale_leaves(&self, epoch: u64) -> Result<Vec<u32>, StoreError> {
        self.c.query_map(
            "SELECT m.leaf FROM members m
             WHERE m.group_id = ?1 AND NOT EXISTS (SELECT 1 FROM devices d
               WHERE d.account = m.account AND d.signature_key = m.signature_key AND d.expires_at > ?2)
             AND NOT EXISTS (SELECT 1 FROM service_proposals p
               WHERE p.group_id = m.group_id AND p.epoch = ?3 AND p.leaf = m.leaf)
             ORDER BY m.leaf",
            params![self.group_id, self.now, epoch as i64],
            |r| r.get(0),
        )
    }

    /// Records a service Remove proposal of `leaf` in `epoch`, once (a
    /// second record of it does nothing). A leaf proposed again (a commit in
    /// between did not carry its proposal) keeps its first proposal's
    /// time: the grace runs from then.
    pub fn record_service_proposal(&self, epoch: u64, leaf: u32) -> Result<(), StoreError> {
        self.c.execute(
            "INSERT INTO service_proposals (group_id, epoch, leaf, created_at)
             VALUES (?1, ?2, ?3, coalesce((SELECT min(created_at) FROM service_proposals
               WHERE group_id = ?1 AND leaf = ?3 AND epoch < ?2), ?4))
             ON CONFLICT (group_id, epoch, leaf) DO NOTHING",
            params![self.group_id, epoch as i64, leaf, self.now],
        )?;
        Ok(())
    }

    /// Forgets the service proposals of epochs before `epoch`.
    pub fn forget_service_proposals(&self, epoch: u64) -> Result<(), StoreError> {
        self.c.execute(
            "DELETE FROM service_proposals WHERE group_id = ?1 AND epoch < ?2",
            params![self.group_id, epoch as i64],
        )?;
        Ok(())
    }

    /// Leaves the service proposed to remove in `epoch` at or before `before`.
    pub fn overdue_removals(&self, epoch: u64, before: i64) -> Result<Vec<u32>, StoreError> {
        self.c.query_map(
            "SELECT leaf FROM service_proposals WHERE group_id = ?1 AND epoch = ?2 AND created_at <= ?3 ORDER BY leaf",
            params![self.group_id, epoch as i64, before],
            |r| r.get(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;

    fn key(n: u8) -> ServiceKey {
        ServiceKey { private: vec![n; 32], public: vec![n + 100; 32] }
    }

    /// Two first starts store one key; a later start keeps the current one.
    #[tokio::test]
    async fn the_first_key_is_stored_once() {
        let (_d, store) = temp_store();
        let (a, b) = tokio::join!(store.ensure_service_key(key(1)), store.ensure_service_key(key(2)));
        assert_eq!(a.unwrap(), b.unwrap());
        assert_eq!(store.service_keys().await.unwrap().len(), 1);
        store.rotate_service_key(key(3)).await.unwrap();
        assert_eq!(store.ensure_service_key(key(4)).await.unwrap(), key(3));
        let first = store.service_keys().await.unwrap()[1].clone();
        assert!(first == key(1) || first == key(2), "one of the first two");
        assert_eq!(store.service_keys().await.unwrap().len(), 2);
    }

    /// A proposal recorded twice is one row, with its first time.
    #[tokio::test]
    async fn a_proposal_is_recorded_once() {
        let (_d, store) = temp_store();
        let overdue = store
            .group_tx(b"g".to_vec(), |tx| {
                tx.record_service_proposal(1, 4)?;
                let later = GroupTx::new(tx.c, tx.group_id.clone(), tx.now + 100);
                later.record_service_proposal(1, 4)?;
                later.overdue_removals(1, tx.now)
            })
            .await
            .unwrap();
        assert_eq!(overdue, [4]);
    }
}
