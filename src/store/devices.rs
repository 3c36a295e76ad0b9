//! Device lists and their subscriptions.

use std::collections::HashSet;

use minidom::Element;

use super::groups::drop_stale_feed;
use super::inbox::insert_inbox;
use super::sql::{params, Db};
use super::usage::lock_account;
use super::{Departed, Store, StoreError};
use crate::protocol::devices::Device;

/// What publishing a device did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePublish {
    /// Stored. `replaced_key`: an existing device got a new signature key,
    /// so its KeyPackages (signed with the old key) were deleted.
    Published { replaced_key: bool },
    TooManyDevices,
    /// Another device of the account has this signature key.
    KeyInUse,
}

/// A device that expired and was taken out of its account's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub account: String,
    pub device_id: String,
}

/// Live devices of `account`, in publication order.
pub(super) fn live_devices(c: &Db, account: &str, now: i64) -> Result<Vec<Device>, StoreError> {
    c.query_map(
        "SELECT device_id, signature_key, label, expires_at FROM devices
         WHERE account = ?1 AND expires_at > ?2 ORDER BY published_at, device_id",
        params![account, now],
        |r| Ok(Device { id: r.get(0)?, signature_key: r.get(1)?, label: r.get(2)?, expires: Some(r.get(3)?) }),
    )
}

impl Store {
    pub async fn live_devices(&self, account: String, now: i64) -> Result<Vec<Device>, StoreError> {
        self.read(move |c| live_devices(c, &account, now)).await
    }

    /// Adds or replaces a device (`device.expires` must be set) and keeps
    /// `event` in the owner's inbox, returning its stanza id. Expired
    /// devices of the account are removed on the way, and returned.
    /// Decided under the account's lock (`lock_account`): the limit
    /// counts live devices, which expire with time and not with a write a
    /// counter could follow, and the signature key must be the account's
    /// only device with it; both are read under the lock that every
    /// publication of the account takes first.
    pub async fn publish_device(
        &self,
        account: String,
        device: Device,
        event: Element,
        max_devices: usize,
        now: i64,
    ) -> Result<(DevicePublish, Option<String>, Vec<Expired>), StoreError> {
        self.write(move |c| {
            lock_account(c, &account)?;
            let expired: Vec<Expired> = c
                .query_map(
                    "DELETE FROM devices WHERE account = ?1 AND expires_at <= ?2 RETURNING account, device_id",
                    params![account, now],
                    |r| Ok(Expired { account: r.get(0)?, device_id: r.get(1)? }),
                )?;
            let old_key: Option<Vec<u8>> = c
                .query_opt(
                    "SELECT signature_key FROM devices WHERE account = ?1 AND device_id = ?2",
                    params![account, device.id],
                    |r| r.get(0),
                )?;
            let key_owner: Option<String> = c
                .query_opt(
                    "SELECT device_id FROM devices WHERE account = ?1 AND signature_key = ?2",
                    params![account, device.signature_key],
                    |r| r.get(0),
                )?;
            if key_owner.is_some_and(|owner| owner != device.id) {
                return Ok((DevicePublish::KeyInUse, None, expired));
            }
            if old_key.is_none() {
                let count: usize =
                    c.query_row("SELECT count(*) FROM devices WHERE account = ?1", params![&account], |r| r.get(0))?;
                if count >= max_devices {
                    return Ok((DevicePublish::TooManyDevices, None, expired));
                }
            }
            let replaced_key = old_key.as_ref().is_some_and(|k| *k != device.signature_key);
            if replaced_key {
                c.execute("DELETE FROM key_packages WHERE account = ?1 AND device_id = ?2", params![account, device.id])?;
            }
            c.execute(
                "INSERT INTO devices (account, device_id, signature_key, label, expires_at, published_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (account, device_id) DO UPDATE SET
                   signature_key = excluded.signature_key, label = excluded.label,
                   expires_at = excluded.expires_at",
                params![account, device.id, device.signature_key, device.label, device.expires, now],
            )?;
            let stanza_id = insert_inbox(c, &account, &event, now)?;
            Ok((DevicePublish::Published { replaced_key }, Some(stanza_id), expired))
        })
        .await
    }

    /// Removes a live device and its KeyPackages, takes it off every feed
    /// and keeps `event` in the owner's inbox; returns the inbox entry's
    /// stanza id and the feeds it left, `None` if there was no such device.
    pub async fn retract_device(
        &self,
        account: String,
        device_id: String,
        event: Element,
        now: i64,
    ) -> Result<Option<(String, Vec<Departed>)>, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "DELETE FROM devices WHERE account = ?1 AND device_id = ?2 AND expires_at > ?3",
                params![account, device_id, now],
            )?;
            if n == 0 {
                return Ok(None);
            }
            let departed = drop_stale_feed(c, None, Some(&account), now)?;
            Ok(Some((insert_inbox(c, &account, &event, now)?, departed)))
        })
        .await
    }

    /// Deletes expired devices (with their KeyPackages) and expired
    /// packages, and takes devices without a live leaf off every feed;
    /// returns the expired devices and the devices taken off feeds.
    pub async fn prune_directory(&self, now: i64) -> Result<(Vec<Expired>, Vec<Departed>), StoreError> {
        self.write(move |c| {
            let expired = c
                .query_map(
                    "DELETE FROM devices WHERE expires_at <= ?1 RETURNING account, device_id",
                    params![now],
                    |r| Ok(Expired { account: r.get(0)?, device_id: r.get(1)? }),
                )?;
            c.execute("DELETE FROM key_packages WHERE not_after <= ?1", params![now])?;
            Ok((expired, drop_stale_feed(c, None, None, now)?))
        })
        .await
    }

    /// Subscribes `subscriber` (a JID of the account `by`) to a node of
    /// `account`'s directory; false when `by` already holds `per_account`
    /// subscriptions there, or `max` other accounts do. Subscribing again
    /// is always true. Decided under `account`'s lock (`lock_account`):
    /// the limits count bare JIDs parsed from the subscriber column, which
    /// no counter row keeps.
    pub async fn subscribe(
        &self,
        account: String,
        node: &'static str,
        subscriber: String,
        by: String,
        limits: (usize, usize),
    ) -> Result<bool, StoreError> {
        let (max, per_account) = limits;
        self.write(move |c| {
            lock_account(c, &account)?;
            // At most max × per_account rows: the limits below keep it so.
            let subscribers: Vec<String> = c.query_map(
                "SELECT subscriber FROM subscriptions WHERE account = ?1 AND node = ?2",
                params![account, node],
                |r| r.get(0),
            )?;
            if subscribers.contains(&subscriber) {
                return Ok(true);
            }
            let bare = |s: &String| s.split('/').next().unwrap_or_default().to_owned();
            let mine = subscribers.iter().filter(|s| bare(s) == by).count();
            let others = subscribers.iter().map(bare).filter(|b| *b != by).collect::<HashSet<_>>().len();
            if mine >= per_account || (mine == 0 && others >= max) {
                return Ok(false);
            }
            c.execute(
                "INSERT INTO subscriptions (account, node, subscriber) VALUES (?1, ?2, ?3)",
                params![account, node, subscriber],
            )?;
            Ok(true)
        })
        .await
    }

    /// False if `subscriber` was not subscribed.
    pub async fn unsubscribe(
        &self,
        account: String,
        node: &'static str,
        subscriber: String,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "DELETE FROM subscriptions WHERE account = ?1 AND node = ?2 AND subscriber = ?3",
                params![account, node, subscriber],
            )?;
            Ok(n > 0)
        })
        .await
    }

    pub async fn subscribers(&self, account: String, node: &'static str) -> Result<Vec<String>, StoreError> {
        self.read(move |c| {
            c.query_map(
                "SELECT subscriber FROM subscriptions WHERE account = ?1 AND node = ?2 ORDER BY subscriber",
                params![account, node],
                |r| r.get(0),
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;

    fn device(id: &str, key: u8) -> Device {
        Device { id: id.into(), signature_key: vec![key; 32], label: None, expires: Some(2_000) }
    }

    #[tokio::test]
    async fn publish_limits_key_reuse_and_expiry() {
        let (_d, store) = temp_store();
        let a = || "alice@example.org".to_string();
        let ev = || Element::builder("event", "urn:x").build();
        let publish = |d| store.publish_device(a(), d, ev(), 2, 1_000);
        assert_eq!(publish(device("one", 1)).await.unwrap().0, DevicePublish::Published { replaced_key: false });
        assert_eq!(publish(device("two", 1)).await.unwrap(), (DevicePublish::KeyInUse, None, vec![]));
        publish(device("two", 2)).await.unwrap();
        assert_eq!(publish(device("three", 3)).await.unwrap(), (DevicePublish::TooManyDevices, None, vec![]));
        assert_eq!(publish(device("two", 4)).await.unwrap().0, DevicePublish::Published { replaced_key: true });
        assert_eq!(store.inbox_len(a()).await.unwrap(), 3, "one inbox entry per change");
        assert_eq!(store.live_devices(a(), 1_999).await.unwrap().len(), 2);
        assert_eq!(store.live_devices(a(), 2_000).await.unwrap().len(), 0, "expired at expires");
        assert!(store.retract_device(a(), "one".into(), ev(), 1_000).await.unwrap().is_some());
        assert!(store.retract_device(a(), "one".into(), ev(), 1_000).await.unwrap().is_none());
        assert_eq!(store.inbox_len(a()).await.unwrap(), 4);
        // A publication after "two" expired removes it and says so.
        let (_, _, expired) = store.publish_device(a(), device("four", 5), ev(), 2, 2_000).await.unwrap();
        assert_eq!(expired, vec![Expired { account: a(), device_id: "two".into() }]);
    }

    /// Many devices published at once against a limit of 3: exactly 3
    /// are stored, each refusal stores nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_publications_stop_at_the_device_limit() {
        let (_d, store) = temp_store();
        let tasks: Vec<_> = (0..10u8)
            .map(|n| {
                let store = store.clone();
                let event = Element::builder("event", "urn:x").build();
                tokio::spawn(async move {
                    store.publish_device("alice@example.org".into(), device(&format!("d{n}"), n), event, 3, 1_000).await
                })
            })
            .collect();
        let mut published = 0;
        for t in tasks {
            match t.await.unwrap().unwrap() {
                (DevicePublish::Published { replaced_key: false }, Some(_), _) => published += 1,
                other => assert_eq!(other, (DevicePublish::TooManyDevices, None, vec![])),
            }
        }
        assert_eq!(published, 3);
        assert_eq!(store.live_devices("alice@example.org".into(), 1_000).await.unwrap().len(), 3);
        assert_eq!(store.inbox_len("alice@example.org".into()).await.unwrap(), 3);
    }

    /// Per node: at most `per_account` subscriptions of one account, and
    /// at most `max` accounts besides; subscribing again always passes.
    #[tokio::test]
    async fn subscriptions_stop_at_both_limits() {
        let (_d, store) = temp_store();
        let sub = |jid: &str| {
            let by = jid.split('/').next().unwrap_or(jid).to_string();
            store.subscribe("alice@example.org".into(), "n", jid.into(), by, (2, 2))
        };
        assert!(sub("bob@example.org/a").await.unwrap());
        assert!(sub("bob@example.org/b").await.unwrap(), "bob's second: at his limit");
        assert!(!sub("bob@example.org/c").await.unwrap(), "bob's third");
        assert!(sub("bob@example.org/a").await.unwrap(), "again");
        assert!(sub("carol@example.org").await.unwrap(), "the second account: at the limit");
        assert!(!sub("dave@example.org").await.unwrap(), "a third account");
        let all = store.subscribers("alice@example.org".into(), "n").await.unwrap();
        assert_eq!(all, ["bob@example.org/a", "bob@example.org/b", "carol@example.org"]);
    }
}
