//! The KeyPackage node (owner uploads and listings) and claims.

use xmpp_parsers::jid::BareJid;

use super::pubsub::{headline, Caller};
use super::{IqRequest, Response, Service, ServiceError};
use crate::metrics::{metrics, Limit};
use crate::protocol::error::AppCondition;
use crate::protocol::keypackages::{
    claimed_element, inspect, ref_hex, upload_bytes, upload_texts, verify, Claim, ClaimOutcome, Policy, Rejection,
    NODE,
};
use crate::protocol::pubsub::{items_result, publish_result, ItemIn};
use crate::protocol::now;
use crate::store::{ClaimContext, KeyPackageUpload};

const DAY: i64 = 24 * 3600;

impl Service {
    fn key_package_policy(&self) -> Policy {
        let d = &self.config.directory;
        Policy {
            cipher_suites: d.cipher_suites.clone(),
            max_lifetime_secs: (d.max_key_package_lifetime_days as i64).saturating_mul(DAY),
            clock_skew_secs: d.clock_skew_secs as i64,
        }
    }

    /// Checks every package (all or nothing), cheap checks first and
    /// signatures last (xep/ §Validation), and stores them.
    pub(super) async fn upload_key_packages(
        &self,
        caller: &Caller<'_>,
        items: Vec<ItemIn>,
    ) -> Result<Response, ServiceError> {
        caller.require_owner()?;
        let texts = upload_texts(&items)?;
        // Decoding and size come before any signature check.
        let max_size = self.config.directory.max_key_package_size;
        let messages = all_or_refused(texts.iter().map(|t| upload_bytes(t, max_size)))?;
        let now = now();
        let account = caller.account.clone();
        let devices = self.store.live_devices(account.to_string(), now).await?;
        let policy = self.key_package_policy();
        let inspected =
            all_or_refused(messages.iter().map(|b| inspect(self.crypto.as_ref(), b, &account, &devices, &policy)))?;
        let max = self.config.directory.max_key_packages_per_device;
        if let Some(refused) = self.store.precheck_key_packages(account.to_string(), inspected, max, now).await? {
            return Err(upload_refused(refused));
        }
        self.charge_verifications(&account, messages.len()).await?;
        metrics().key_package_verifications.inc_by(messages.len() as u64);
        let crypto = self.crypto.clone();
        // Signature checks are CPU work: keep them off the async workers.
        let verified = super::blocking(move || {
            Ok(messages.iter().map(|b| verify(crypto.as_ref(), b, &account, &devices, &policy, now)).collect::<Vec<_>>())
        })
        .await?;
        let kps = all_or_refused(verified.into_iter())?;
        let ids: Vec<String> = kps.iter().map(|k| ref_hex(&k.kp_ref)).collect();
        match self.store.store_key_packages(caller.account.to_string(), kps, max, now).await? {
            KeyPackageUpload::Stored => {
                metrics().key_packages_uploaded.inc_by(ids.len() as u64);
                Ok(Response::result(publish_result(NODE, &ids)))
            }
            refused => Err(upload_refused(refused)),
        }
    }

    /// Takes `n` signature verifications from the account's budget: an
    /// upload larger than the burst can never pass.
    async fn charge_verifications(&self, account: &BareJid, n: usize) -> Result<(), ServiceError> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if n == 0 {
            return Ok(());
        }
        match self.charge(Limit::KeyPackageVerification, account.to_string(), n).await? {
            true => Ok(()),
            false => Err(ServiceError::Limit(AppCondition::TooManyKeyPackages)),
        }
    }

    /// The owner's view of the pool: references and metadata, no packages.
    pub(super) async fn key_package_items(&self, caller: &Caller<'_>) -> Result<Response, ServiceError> {
        caller.require_owner()?;
        let infos = self.store.key_package_infos(caller.account.to_string(), now()).await?;
        let items = infos.into_iter().map(|i| (i.kp_ref.clone(), i.to_element())).collect();
        Ok(Response::result(items_result(NODE, items)))
    }

    /// Hands out one package per device, rate-limited per (claimer,
    /// account) in hand-outs, and tells the owner. Every refusal comes
    /// before the store is written.
    pub(super) async fn claim(&self, req: &IqRequest, account: &BareJid) -> Result<Response, ServiceError> {
        let claim = Claim::parse(&req.payload)?;
        let max = self.config.directory.max_devices_per_account;
        if claim.devices.len() > max {
            return Err(ServiceError::Limit(AppCondition::TooManyDevices));
        }
        let now = now();
        let asked = match claim.devices.len() {
            0 => self.store.live_devices(account.to_string(), now).await?.len().min(max),
            n => n,
        };
        let claimer = req.from.to_bare();
        self.check_claim_rate(&claimer, account, asked).await?;
        let ctx = ClaimContext {
            account: account.to_string(),
            claimer: claimer.to_string(),
            low_water: self.config.directory.low_water,
            max_devices: asked,
            max_key_package_size: self.config.directory.max_key_package_size,
            now,
        };
        let result = self.store.claim(ctx, claim).await?;
        let claimed = result.outcomes.iter().filter(|o| matches!(o, ClaimOutcome::Claimed { .. })).count();
        metrics().key_packages_claimed.inc_by(claimed as u64);
        let from = self.directory_jid(account);
        let messages = result
            .notices
            .iter()
            .map(|n| headline(&from, account.as_str(), n.notice.to_element(), Some(&n.stanza_id)))
            .collect();
        Ok(Response { payload: Some(claimed_element(&result.outcomes)), messages, ..Default::default() })
    }

    /// One token per device asked for; a claim that asks for none costs one.
    /// The bucket is the claimer's and the account's (a JID has no space).
    async fn check_claim_rate(&self, claimer: &BareJid, account: &BareJid, devices: usize) -> Result<(), ServiceError> {
        let tokens = u32::try_from(devices).unwrap_or(u32::MAX).max(1);
        match self.charge(Limit::Claim, format!("{claimer} {account}"), tokens).await? {
            true => Ok(()),
            false => Err(ServiceError::Limit(AppCondition::TooManyDevices)),
        }
    }
}

/// Every package's value, or the refusal that lists every refused one.
fn all_or_refused<T>(checked: impl Iterator<Item = Result<T, Rejection>>) -> Result<Vec<T>, ServiceError> {
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for (i, r) in checked.enumerate() {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => refused.push((i, e)),
        }
    }
    match refused.is_empty() {
        true => Ok(ok),
        false => Err(ServiceError::InvalidKeyPackages(refused)),
    }
}

fn upload_refused(refused: KeyPackageUpload) -> ServiceError {
    match refused {
        KeyPackageUpload::Refused(list) => ServiceError::InvalidKeyPackages(list),
        _ => ServiceError::Limit(AppCondition::TooManyKeyPackages),
    }
}
