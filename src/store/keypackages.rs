//! KeyPackage pools: uploads, owner listings and atomic claims.

use std::collections::{BTreeSet, HashMap, HashSet};


use super::devices::live_devices;
use super::inbox::{insert_notice, StoredNotice};
use super::sql::{params, Db, Param};
use super::{undo_refused, Store, StoreError};
use crate::protocol::keypackages::{
    ref_hex, Claim, ClaimOutcome, Inspected, KeyPackageInfo, Rejection, VerifiedKeyPackage,
};
use crate::protocol::notices::{KeyPackageClaimed, KeyPackagesLow, Notice};

/// What an upload did; all or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPackageUpload {
    Stored,
    /// Refused packages, by index in the upload.
    Refused(Vec<(usize, Rejection)>),
    /// The device would hold more than the configured maximum.
    TooMany { device: String },
}

/// The outcome of a claim and the notices it left in the owner's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimResult {
    pub outcomes: Vec<ClaimOutcome>,
    pub notices: Vec<StoredNotice>,
}

/// Parameters of a claim that come from the service, not the claimer.
pub struct ClaimContext {
    pub account: String,
    pub claimer: String,
    pub low_water: u32,
    /// Devices the claim may hand out to: the rate tokens it paid.
    pub max_devices: usize,
    /// Larger packages (stored before the limit was lowered) are not
    /// handed out, so that the answer fits in one stanza.
    pub max_key_package_size: usize,
    pub now: i64,
}

/// A package must outlive its hand-out by this much to be handed out.
const MIN_REMAINING_LIFETIME: i64 = 60;

fn ordinary_count(c: &Db, account: &str, device: &str, now: i64) -> Result<usize, StoreError> {
    Ok(c.query_row(
        "SELECT count(*) FROM key_packages
         WHERE account = ?1 AND device_id = ?2 AND last_resort = 0 AND not_after > ?3",
        params![account, device, now + MIN_REMAINING_LIFETIME],
        |r| r.get(0),
    )?)
}

/// Whether the `i`th of `refs` is stored already or occurs earlier in them.
fn duplicate(c: &Db, refs: &[&[u8]], i: usize) -> Result<bool, StoreError> {
    let stored: Option<i64> =
        c.query_opt("SELECT 1 FROM key_packages WHERE kp_ref = ?1", params![refs[i]], |r| r.get(0))?;
    Ok(stored.is_some() || refs[..i].contains(&refs[i]))
}

/// Checks an upload against the store: devices live (their pools
/// locked, see `lock_pools`), no duplicates.
fn refusals(c: &Db, pools: &HashMap<String, i64>, kps: &[VerifiedKeyPackage]) -> Result<Vec<(usize, Rejection)>, StoreError> {
    let refs: Vec<&[u8]> = kps.iter().map(|k| k.kp_ref.as_slice()).collect();
    let mut refused = Vec::new();
    for (i, kp) in kps.iter().enumerate() {
        if !pools.contains_key(&kp.device_id) {
            refused.push((i, Rejection::UnknownSignatureKey));
        } else if duplicate(c, &refs, i)? {
            refused.push((i, Rejection::Duplicate));
        } else if kp.last_resort && kps[..i].iter().any(|k| k.last_resort && k.device_id == kp.device_id) {
            refused.push((i, Rejection::ExtraLastResort));
        }
    }
    Ok(refused)
}

/// Locks the pool of every live device of the upload (in device order, so
/// that two uploads never wait on each other crosswise) with one UPDATE of
/// its device row, which also clears its low-water warning and allocates
/// its packages' upload positions (`kp_seq`); returns the first position
/// per live device. Its count of fresh packages changes with time, not
/// only with writes, so no counter can hold it: it is read under this lock.
fn lock_pools(c: &Db, account: &str, kps: &[VerifiedKeyPackage], now: i64) -> Result<HashMap<String, i64>, StoreError> {
    let devices: BTreeSet<&str> = kps.iter().map(|k| k.device_id.as_str()).collect();
    let mut pools = HashMap::new();
    for device in devices {
        let new = kps.iter().filter(|k| k.device_id == device).count() as i64;
        let last: Option<i64> = c.query_opt(
            "UPDATE devices SET low_warned = 0, kp_seq = kp_seq + ?3
             WHERE account = ?1 AND device_id = ?2 AND expires_at > ?4 RETURNING kp_seq",
            params![account, device, new, now],
            |r| r.get(0),
        )?;
        if let Some(last) = last {
            pools.insert(device.to_owned(), last - new + 1);
        }
    }
    Ok(pools)
}

impl Store {
    /// The checks of an upload against the pool before any signature is
    /// verified (xep/ §Validation, second stage): duplicates by
    /// KeyPackageRef, then at most the device's room for ordinary packages
    /// plus one (its last-resort package) per device. None: nothing against.
    /// A read that only spares verifying a doomed upload: the decision is
    /// [`Store::store_key_packages`]'s.
    pub async fn precheck_key_packages(
        &self,
        account: String,
        inspected: Vec<Inspected>,
        max_per_device: usize,
        now: i64,
    ) -> Result<Option<KeyPackageUpload>, StoreError> {
        self.read(move |c| {
            let refs: Vec<&[u8]> = inspected.iter().map(|k| k.kp_ref.as_slice()).collect();
            let mut refused = Vec::new();
            for i in 0..refs.len() {
                if duplicate(c, &refs, i)? {
                    refused.push((i, Rejection::Duplicate));
                }
            }
            if !refused.is_empty() {
                return Ok(Some(KeyPackageUpload::Refused(refused)));
            }
            for (i, kp) in inspected.iter().enumerate() {
                let device = kp.device_id.as_str();
                if inspected[..i].iter().any(|k| k.device_id == device) {
                    continue;
                }
                let new = inspected.iter().filter(|k| k.device_id == device).count();
                if ordinary_count(c, &account, device, now)? + new > max_per_device + 1 {
                    return Ok(Some(KeyPackageUpload::TooMany { device: device.to_owned() }));
                }
            }
            Ok(None)
        })
        .await
    }

    /// Stores verified packages (all or none). A last-resort package
    /// replaces the device's previous one. Each device's count limit is
    /// decided under its pool's lock (`lock_pools`); a package stored
    /// meanwhile under the same KeyPackageRef makes the INSERT do nothing
    /// and is refused as a duplicate. A refusal undoes the whole upload.
    pub async fn store_key_packages(
        &self,
        account: String,
        kps: Vec<VerifiedKeyPackage>,
        max_per_device: usize,
        now: i64,
    ) -> Result<KeyPackageUpload, StoreError> {
        self.write(move |c| {
            undo_refused(c, || {
                let mut next_seq = lock_pools(c, &account, &kps, now)?;
                let refused = refusals(c, &next_seq, &kps)?;
                if !refused.is_empty() {
                    return Ok(Err(KeyPackageUpload::Refused(refused)));
                }
                for kp in kps.iter().filter(|k| !k.last_resort) {
                    let new = kps.iter().filter(|k| !k.last_resort && k.device_id == kp.device_id).count();
                    if ordinary_count(c, &account, &kp.device_id, now)? + new > max_per_device {
                        return Ok(Err(KeyPackageUpload::TooMany { device: kp.device_id.clone() }));
                    }
                }
                for (i, kp) in kps.iter().enumerate() {
                    let seq = next_seq.get_mut(&kp.device_id).expect("a locked pool");
                    if !insert_key_package(c, &account, kp, *seq)? {
                        return Ok(Err(KeyPackageUpload::Refused(vec![(i, Rejection::Duplicate)])));
                    }
                    *seq += 1;
                }
                Ok(Ok(KeyPackageUpload::Stored))
            })
        })
        .await
    }

    /// The account's stored packages of live devices, for its owner.
    pub async fn key_package_infos(&self, account: String, now: i64) -> Result<Vec<KeyPackageInfo>, StoreError> {
        self.read(move |c| {
            c.query_map(
                "SELECT k.kp_ref, k.device_id, k.cipher_suite, k.not_after, k.last_resort
                 FROM key_packages k JOIN devices d USING (account, device_id)
                 WHERE k.account = ?1 AND d.expires_at > ?2 AND k.not_after > ?2
                 ORDER BY k.device_id, k.last_resort, k.seq",
                params![account, now],
                |r| {
                    Ok(KeyPackageInfo {
                        kp_ref: ref_hex(&r.get::<Vec<u8>>(0)?),
                        device_id: r.get(1)?,
                        cipher_suite: r.get(2)?,
                        not_after: r.get(3)?,
                        last_resort: r.get(4)?,
                    })
                },
            )
        })
        .await
    }

    /// Hands out one package per live device (or per requested device) and
    /// deletes it, in one transaction: no package is ever handed out twice,
    /// no device gets more than one per claim, and no more than
    /// `ctx.max_devices` devices get one. A last-resort package is handed out
    /// only when the device has no other, and is kept. Every hand-out leaves
    /// a notice in the owner's inbox.
    pub async fn claim(&self, ctx: ClaimContext, claim: Claim) -> Result<ClaimResult, StoreError> {
        self.write(move |c| {
            let devices = live_devices(c, &ctx.account, ctx.now)?;
            let mut wanted: Vec<String> = if claim.devices.is_empty() {
                devices.iter().map(|d| d.id.clone()).collect()
            } else {
                claim.devices.clone()
            };
            let mut seen = HashSet::new();
            wanted.retain(|d| seen.insert(d.clone()));
            wanted.truncate(ctx.max_devices);
            let mut result = ClaimResult { outcomes: Vec::new(), notices: Vec::new() };
            for device in wanted {
                if !devices.iter().any(|d| d.id == device) {
                    result.outcomes.push(ClaimOutcome::UnknownDevice { device });
                    continue;
                }
                let outcome = claim_one(c, &ctx, &device, claim.cipher_suite)?;
                if let ClaimOutcome::Claimed { kp_ref, last_resort, .. } = &outcome {
                    notify_claim(c, &ctx, &device, kp_ref, *last_resort, &mut result.notices)?;
                }
                result.outcomes.push(outcome);
            }
            Ok(result)
        })
        .await
    }
}

/// Stores `kp` at position `seq` of its device's pool (a last-resort
/// package replaces the device's previous one); false, storing nothing,
/// if a package with its KeyPackageRef is stored already.
fn insert_key_package(c: &Db, account: &str, kp: &VerifiedKeyPackage, seq: i64) -> Result<bool, StoreError> {
    if kp.last_resort {
        c.execute(
            "DELETE FROM key_packages WHERE account = ?1 AND device_id = ?2 AND last_resort = 1",
            params![account, kp.device_id],
        )?;
    }
    let stored = c
        .execute(
            "INSERT INTO key_packages (kp_ref, account, device_id, cipher_suite, last_resort, not_after, message, seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (kp_ref) DO NOTHING",
            params![kp.kp_ref, account, kp.device_id, kp.cipher_suite, kp.last_resort, kp.not_after, kp.message, seq],
        )?;
    Ok(stored == 1)
}

/// SQL: a package of device `?2` of account `?1` that a claim may hand
/// out: fresh at `?3`, of suite `?4` (NULL: any), at most `?5` octets.
const CANDIDATE: &str = "account = ?1 AND device_id = ?2 AND not_after > ?3
    AND (cipher_suite = ?4 OR ?4 IS NULL) AND length(message) <= ?5";

/// A handed-out package: its KeyPackageRef, its message, and whether it
/// is the device's last-resort package.
type HandedOut = (Vec<u8>, Vec<u8>, bool);

/// One device's package for a claim (`args`: the parameters of
/// [`CANDIDATE`]). The ordinary package is taken by one DELETE ...
/// RETURNING of the oldest candidate: its WHERE is the decision, so a
/// package is handed out at most once; a claimer that lost the race for
/// it gets no row and tries again while ordinary candidates remain. The
/// last-resort package is read only once a statement has seen no ordinary
/// candidate left (each statement sees what was committed before it).
fn hand_out(c: &Db, args: &[&dyn Param]) -> Result<Option<HandedOut>, StoreError> {
    let ordinary = format!(
        "DELETE FROM key_packages WHERE kp_ref = (
            SELECT kp_ref FROM key_packages WHERE {CANDIDATE} AND last_resort = 0 ORDER BY seq LIMIT 1)
         RETURNING kp_ref, message"
    );
    let ordinary_left = format!("SELECT EXISTS (SELECT 1 FROM key_packages WHERE {CANDIDATE} AND last_resort = 0)");
    let last_resort = format!("SELECT kp_ref, message FROM key_packages WHERE {CANDIDATE} AND last_resort = 1");
    loop {
        if let Some(kp) = c.query_opt(&ordinary, args, |r| Ok((r.get(0)?, r.get(1)?, false)))? {
            return Ok(Some(kp));
        }
        if !c.query_row(&ordinary_left, args, |r| r.get::<bool>(0))? {
            return c.query_opt(&last_resort, args, |r| Ok((r.get(0)?, r.get(1)?, true)));
        }
    }
}

fn claim_one(c: &Db, ctx: &ClaimContext, device: &str, suite: Option<u16>) -> Result<ClaimOutcome, StoreError> {
    let fresh = ctx.now + MIN_REMAINING_LIFETIME;
    let max_size = i64::try_from(ctx.max_key_package_size).unwrap_or(i64::MAX);
    let found = hand_out(c, params![ctx.account, device, fresh, suite, max_size])?;
    let device = device.to_owned();
    Ok(match found {
        Some((kp_ref, message, last_resort)) => {
            ClaimOutcome::Claimed { device, kp_ref: ref_hex(&kp_ref), last_resort, message }
        }
        None => {
            let any: usize = c.query_row(
                "SELECT count(*) FROM key_packages WHERE account = ?1 AND device_id = ?2 AND not_after > ?3",
                params![ctx.account, device, fresh],
                |r| r.get(0),
            )?;
            if any > 0 {
                ClaimOutcome::NothingCompatible { device }
            } else {
                ClaimOutcome::Exhausted { device }
            }
        }
    })
}

/// The claim notice, and the low-water warning when this claim left the
/// device's pool at or below the mark and the account was not warned
/// since the device's last upload.
fn notify_claim(
    c: &Db,
    ctx: &ClaimContext,
    device: &str,
    kp_ref: &str,
    last_resort: bool,
    notices: &mut Vec<StoredNotice>,
) -> Result<(), StoreError> {
    let remaining = ordinary_count(c, &ctx.account, device, ctx.now)? as u32;
    let by = ctx.claimer.parse().map_err(|_| StoreError::Batch(format!("bad claimer {}", ctx.claimer)))?;
    let claimed = Notice::KeyPackageClaimed(KeyPackageClaimed {
        device: device.to_owned(),
        kp_ref: kp_ref.to_owned(),
        by,
        remaining,
        last_resort,
    });
    notices.push(insert_notice(c, &ctx.account, claimed, ctx.now)?);
    if !last_resort && remaining <= ctx.low_water && first_warning(c, &ctx.account, device)? {
        let low = Notice::KeyPackagesLow(KeyPackagesLow { device: device.to_owned(), remaining });
        notices.push(insert_notice(c, &ctx.account, low, ctx.now)?);
    }
    Ok(())
}

/// Marks the device warned; false if it was already.
fn first_warning(c: &Db, account: &str, device: &str) -> Result<bool, StoreError> {
    let changed = c
        .execute(
            "UPDATE devices SET low_warned = 1 WHERE account = ?1 AND device_id = ?2 AND low_warned = 0",
            params![account, device],
        )?;
    Ok(changed == 1)
}

#[cfg(test)]
mod tests {
    use minidom::Element;

    use super::*;
    use crate::protocol::devices::Device;
    use crate::store::tests::temp_store;

    fn package(n: u8, last_resort: bool, size: usize) -> VerifiedKeyPackage {
        let device_id = "d".to_string();
        VerifiedKeyPackage { kp_ref: vec![n; 32], device_id, cipher_suite: 1, last_resort, not_after: 9_000, message: vec![n; size] }
    }

    fn context(max_devices: usize, max_key_package_size: usize) -> ClaimContext {
        let (account, claimer) = ("alice@example.org".into(), "bob@example.org".into());
        ClaimContext { account, claimer, low_water: 0, max_devices, max_key_package_size, now: 1_000 }
    }

    #[tokio::test]
    async fn a_claim_hands_out_once_per_device_within_its_limits() {
        let (_d, store) = temp_store();
        let alice = || "alice@example.org".to_string();
        let device = Device { id: "d".into(), signature_key: vec![1; 32], label: None, expires: Some(5_000) };
        store.publish_device(alice(), device, Element::builder("e", "urn:x").build(), 2, 1_000).await.unwrap();
        let kps = vec![package(1, false, 10), package(2, false, 10), package(3, false, 10), package(4, true, 500)];
        assert_eq!(store.store_key_packages(alice(), kps, 10, 1_000).await.unwrap(), KeyPackageUpload::Stored);

        // The same device three times: one hand-out, one notice.
        let thrice = Claim { cipher_suite: None, devices: vec!["d".into(); 3] };
        let result = store.claim(context(3, 100), thrice).await.unwrap();
        assert_eq!((result.outcomes.len(), result.notices.len()), (1, 1));
        // No more devices than paid for.
        assert!(store.claim(context(0, 100), Claim::default()).await.unwrap().outcomes.is_empty());
        // Two ordinary packages are left; the last resort one is over the size limit.
        for _ in 0..2 {
            let one = store.claim(context(1, 100), Claim::default()).await.unwrap();
            assert!(matches!(&one.outcomes[..], [ClaimOutcome::Claimed { last_resort: false, .. }]), "{one:?}");
        }
        let none = store.claim(context(1, 100), Claim::default()).await.unwrap();
        assert_eq!(none.outcomes, vec![ClaimOutcome::NothingCompatible { device: "d".into() }]);
        let last = store.claim(context(1, 500), Claim::default()).await.unwrap();
        assert!(matches!(&last.outcomes[..], [ClaimOutcome::Claimed { last_resort: true, .. }]), "{last:?}");
    }

    async fn store_with_device() -> (crate::store::tests::Scratch, Store) {
        let (d, store) = temp_store();
        let device = Device { id: "d".into(), signature_key: vec![1; 32], label: None, expires: Some(5_000) };
        store.publish_device("alice@example.org".into(), device, Element::builder("e", "urn:x").build(), 2, 1_000).await.unwrap();
        (d, store)
    }

    async fn upload(store: &Store, kps: Vec<VerifiedKeyPackage>, max: usize) -> KeyPackageUpload {
        store.store_key_packages("alice@example.org".into(), kps, max, 1_000).await.unwrap()
    }

    async fn stored(store: &Store) -> usize {
        store.key_package_infos("alice@example.org".into(), 1_000).await.unwrap().len()
    }

    /// The per-device limit holds at its last package; a refused upload
    /// stores nothing, and an upload for a device that is not live neither.
    #[tokio::test]
    async fn an_upload_fills_the_pool_exactly_to_its_limit() {
        let (_d, store) = store_with_device().await;
        let kps = |from: u8, n: u8| (from..from + n).map(|i| package(i, false, 10)).collect::<Vec<_>>();
        assert_eq!(upload(&store, kps(1, 3), 4).await, KeyPackageUpload::Stored);
        let mut over = kps(10, 2);
        over.push(package(20, true, 10));
        assert_eq!(upload(&store, over, 4).await, KeyPackageUpload::TooMany { device: "d".into() }, "one over");
        assert_eq!(stored(&store).await, 3, "nothing of the refused upload");
        let mut exact = kps(10, 1);
        exact.push(package(20, true, 10));
        assert_eq!(upload(&store, exact, 4).await, KeyPackageUpload::Stored, "exactly at the limit, plus the last resort");
        assert_eq!(stored(&store).await, 5);
        let stranger = VerifiedKeyPackage { device_id: "gone".into(), ..package(30, false, 10) };
        let refused = upload(&store, vec![package(31, false, 10), stranger], 10).await;
        assert_eq!(refused, KeyPackageUpload::Refused(vec![(1, Rejection::UnknownSignatureKey)]));
        assert_eq!(stored(&store).await, 5);
    }

    /// Many claimers at once on K one-time packages: each is handed out
    /// exactly once, in upload order, then only the last-resort one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_claims_hand_each_package_out_once_then_the_last_resort() {
        const K: u8 = 12;
        let (_d, store) = store_with_device().await;
        let first: Vec<_> = (1..=K / 2).map(|i| package(i, false, 10)).collect();
        let mut second: Vec<_> = (K / 2 + 1..=K).map(|i| package(i, false, 10)).collect();
        second.push(package(100, true, 10));
        assert_eq!(upload(&store, first, 20).await, KeyPackageUpload::Stored);
        assert_eq!(upload(&store, second, 20).await, KeyPackageUpload::Stored);
        let claims: Vec<_> = (0..3 * K)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.claim(context(1, 100), Claim::default()).await.unwrap() })
            })
            .collect();
        let (mut ordinary, mut last_resort) = (Vec::new(), 0);
        for c in claims {
            match &c.await.unwrap().outcomes[..] {
                [ClaimOutcome::Claimed { last_resort: false, message, .. }] => ordinary.push(message[0]),
                [ClaimOutcome::Claimed { last_resort: true, message, .. }] if message[0] == 100 => last_resort += 1,
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        ordinary.sort();
        assert_eq!(ordinary, (1..=K).collect::<Vec<_>>(), "each one-time package exactly once");
        assert_eq!(last_resort, 2 * usize::from(K));
        // Claims in sequence take the oldest package first, across uploads.
        let (_d, store) = store_with_device().await;
        assert_eq!(upload(&store, vec![package(5, false, 10), package(3, false, 10)], 20).await, KeyPackageUpload::Stored);
        assert_eq!(upload(&store, vec![package(1, false, 10)], 20).await, KeyPackageUpload::Stored);
        for expected in [5, 3, 1] {
            let one = store.claim(context(1, 100), Claim::default()).await.unwrap();
            assert!(matches!(&one.outcomes[..], [ClaimOutcome::Claimed { message, .. }] if message[0] == expected), "{one:?}");
        }
    }

    /// Runs `steps` on one device's pool with the mark at 3 (`Some(n)`: an
    /// upload of n packages, `None`: a claim); for each claim, the
    /// `remaining` of its low-water warning, if it sent one.
    async fn warnings(steps: &[Option<u8>]) -> Vec<Option<u32>> {
        let (_d, store) = temp_store();
        let alice = || "alice@example.org".to_string();
        let device = Device { id: "d".into(), signature_key: vec![1; 32], label: None, expires: Some(5_000) };
        store.publish_device(alice(), device, Element::builder("e", "urn:x").build(), 2, 1_000).await.unwrap();
        let mut out = Vec::new();
        for step in steps {
            match step {
                Some(n) => {
                    let kps = (0..*n).map(|i| package(n * 10 + i, false, 10)).collect();
                    assert_eq!(store.store_key_packages(alice(), kps, 10, 1_000).await.unwrap(), KeyPackageUpload::Stored);
                }
                None => {
                    let ctx = ClaimContext { low_water: 3, ..context(1, 100) };
                    let notices = store.claim(ctx, Claim::default()).await.unwrap().notices;
                    out.push(notices.iter().find_map(|n| match &n.notice {
                        Notice::KeyPackagesLow(low) => Some(low.remaining),
                        _ => None,
                    }));
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn a_pool_is_warned_once_at_or_below_low_water_until_the_next_upload() {
        // Down from above the mark: warned on reaching it, once.
        assert_eq!(warnings(&[Some(5), None, None, None, None]).await, [None, Some(3), None, None]);
        // Uploaded below the mark: warned at its first claim, once; an
        // upload that leaves it low is warned again.
        assert_eq!(warnings(&[Some(2), None, None, Some(1), None]).await, [Some(1), None, Some(0)]);
    }
}
