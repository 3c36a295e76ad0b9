//! KeyPackages: keep a device's pool topped up, claim other accounts'
//! packages and verify them with the service's own check.

use xmpp_parsers::disco::DiscoInfoResult;
use xmpp_parsers::jid::{BareJid, Jid};

use super::device::{Device, DeviceError};
use super::devices::{directory_jid, result_items};
use super::port::Port;
use super::storage::DeviceStorage;
use super::session::ClientError;
use crate::protocol::keypackages::{
    key_package_element, parse_claimed, verify, Claim, ClaimOutcome, KeyPackageInfo, Policy, Rejection,
    VerifiedKeyPackage, NODE,
};
use crate::protocol::notices::Notice;
use crate::protocol::now;
use crate::protocol::pubsub::{publish_request, simple_request, NS_PUBSUB};

/// Tolerance for clocks that disagree, in the client's own checks.
const CLOCK_SKEW: i64 = 300;

fn malformed(why: &str) -> ClientError {
    ClientError::Malformed(why.to_owned())
}

/// Ordinary KeyPackages a device keeps on the service.
pub const POOL_TARGET: usize = 20;
/// A last-resort package is replaced after this long, even if unused.
pub const LAST_RESORT_MAX_AGE: i64 = 30 * 24 * 3600;

/// What [`Device::refill`] uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RefillReport {
    pub uploaded: usize,
    pub last_resort_replaced: bool,
    /// Ordinary packages on the service afterwards.
    pub pool: usize,
}

/// A claimed package that passed [`verify`] against the account's device list.
#[derive(Debug, Clone)]
pub struct VerifiedClaim {
    pub device: String,
    pub key_package: VerifiedKeyPackage,
    pub last_resort: bool,
}

impl Port {
    /// The service's limits form (xep/ §Service Discovery), as field values by name.
    pub async fn service_limits(&self, service: &Jid) -> Result<Vec<(String, Vec<String>)>, ClientError> {
        let query = minidom::Element::builder("query", xmpp_parsers::ns::DISCO_INFO).build();
        let info = self.iq(service, "get", query).await?.ok_or_else(|| malformed("empty disco#info"))?;
        let info = DiscoInfoResult::try_from(info).map_err(|e| ClientError::Malformed(e.to_string()))?;
        let form = info
            .extensions
            .into_iter()
            .find(|f| f.form_type() == Some(crate::protocol::NS))
            .ok_or_else(|| malformed("no urn:xmpp:mls:0 limits form"))?;
        Ok(form.fields.into_iter().filter_map(|f| Some((f.var?, f.values))).collect())
    }

    /// The service's entry for a group's `external_senders`, if its limits
    /// form advertises one (xep/ §Service Removals).
    pub async fn external_sender(&self, service: &Jid) -> Result<Option<openmls::prelude::ExternalSender>, ClientError> {
        use tls_codec::Deserialize as _;
        let form = self.service_limits(service).await?;
        let field = form.into_iter().find(|(var, _)| var == crate::protocol::disco::EXTERNAL_SENDER);
        let Some(value) = field.and_then(|(_, values)| values.into_iter().next()) else { return Ok(None) };
        let bytes = crate::protocol::b64_decode(&value).map_err(|e| ClientError::Malformed(e.to_string()))?;
        openmls::prelude::ExternalSender::tls_deserialize_exact(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Malformed(e.to_string()))
    }

    /// The service's KeyPackage policy, from its disco#info limits form.
    pub async fn key_package_policy(&self, service: &Jid) -> Result<Policy, ClientError> {
        let form = self.service_limits(service).await?;
        let values = |var: &str| form.iter().find(|(v, _)| v == var).map(|(_, values)| values.clone());
        let number = |v: Option<Vec<String>>| v.and_then(|v| v.first()?.parse::<i64>().ok());
        Ok(Policy {
            cipher_suites: values("cipher-suites").unwrap_or_default().iter().filter_map(|v| v.parse().ok()).collect(),
            max_lifetime_secs: number(values("max-key-package-lifetime")).ok_or_else(|| malformed("no lifetime"))?,
            clock_skew_secs: CLOCK_SKEW,
        })
    }

    /// Uploads MLSMessages carrying KeyPackages; returns their references.
    pub async fn upload_key_packages(&self, service: &Jid, messages: &[Vec<u8>]) -> Result<Vec<String>, ClientError> {
        let to = directory_jid(&self.jid().to_bare(), service);
        let items = messages.iter().map(|m| (None, key_package_element(m))).collect();
        let result = self.iq(&to, "set", publish_request(NODE, items)).await?;
        let publish = result
            .as_ref()
            .and_then(|r| r.get_child("publish", NS_PUBSUB))
            .ok_or_else(|| ClientError::Malformed("publish result without <publish/>".into()))?;
        Ok(publish.children().filter_map(|i| i.attr("id").map(str::to_owned)).collect())
    }

    /// The signed-in account's stored packages (metadata only).
    pub async fn key_package_infos(&self, service: &Jid) -> Result<Vec<KeyPackageInfo>, ClientError> {
        let to = directory_jid(&self.jid().to_bare(), service);
        let result = self.iq(&to, "get", simple_request("items", NODE, &[], None)).await?;
        result_items(result)?
            .into_iter()
            .map(|(id, p)| KeyPackageInfo::parse(&id, &p).map_err(|e| ClientError::Malformed(e.to_string())))
            .collect()
    }

    /// Claims one package per device of `account`.
    pub async fn claim(&self, service: &Jid, account: &BareJid, claim: &Claim) -> Result<Vec<ClaimOutcome>, ClientError> {
        let to = directory_jid(account, service);
        let result = self.iq(&to, "set", claim.to_element()).await?;
        let claimed = result.ok_or_else(|| ClientError::Malformed("empty claim result".into()))?;
        parse_claimed(&claimed).map_err(|e| ClientError::Malformed(e.to_string()))
    }

    /// Checks every claimed package against `account`'s device list with
    /// the same function the service runs: one result per `Claimed` outcome.
    pub async fn check_claimed(
        &self,
        service: &Jid,
        account: &BareJid,
        outcomes: &[ClaimOutcome],
        policy: &Policy,
        crypto: &impl openmls_traits::crypto::OpenMlsCrypto,
    ) -> Result<Vec<Result<VerifiedKeyPackage, Rejection>>, ClientError> {
        let devices = self.devices(service, account).await?;
        let now = now();
        Ok(outcomes
            .iter()
            .filter_map(|o| match o {
                ClaimOutcome::Claimed { device, message, .. } => Some((device, message)),
                _ => None,
            })
            .map(|(device, message)| {
                let kp = verify(crypto, message, account, &devices, policy, now)?;
                // The package must belong to the device it was claimed for.
                if kp.device_id != *device {
                    return Err(Rejection::UnknownSignatureKey);
                }
                Ok(kp)
            })
            .collect())
    }

    /// Claims and checks; any package that fails the check is an error.
    pub async fn claim_verified(
        &self,
        service: &Jid,
        account: &BareJid,
        claim: &Claim,
        policy: &Policy,
        crypto: &impl openmls_traits::crypto::OpenMlsCrypto,
    ) -> Result<Vec<VerifiedClaim>, ClaimError> {
        let outcomes = self.claim(service, account, claim).await?;
        let checked = self.check_claimed(service, account, &outcomes, policy, crypto).await?;
        let claimed = outcomes.iter().filter_map(|o| match o {
            ClaimOutcome::Claimed { device, last_resort, .. } => Some((device.clone(), *last_resort)),
            _ => None,
        });
        claimed
            .zip(checked)
            .map(|((device, last_resort), check)| match check {
                Ok(key_package) => Ok(VerifiedClaim { device, key_package, last_resort }),
                Err(reason) => Err(ClaimError::Rejected { device, reason }),
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the package of device {device} fails the check: {}", .reason.reason())]
    Rejected { device: String, reason: Rejection },
}

#[derive(Debug, thiserror::Error)]
pub enum RefillError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl<S: DeviceStorage> Device<S> {
    /// Tops the device's pool up to `target` ordinary packages and replaces
    /// the last-resort package if `renew_last_resort` (it was handed out),
    /// or if it is missing on the service or too old.
    pub async fn refill(
        &self,
        port: &Port,
        service: &Jid,
        target: usize,
        renew_last_resort: bool,
    ) -> Result<RefillReport, RefillError> {
        let mine: Vec<KeyPackageInfo> =
            port.key_package_infos(service).await?.into_iter().filter(|i| i.device_id == self.id()).collect();
        let pool = mine.iter().filter(|i| !i.last_resort).count();
        let mut messages = self.key_packages(target.saturating_sub(pool))?;
        let uploaded = messages.len();
        let stale = renew_last_resort || match self.last_resort()? {
            Some((kp_ref, created)) => {
                now() - created > LAST_RESORT_MAX_AGE || !mine.iter().any(|i| i.last_resort && i.kp_ref == kp_ref)
            }
            None => true,
        };
        let mut last_resort_ref = None;
        if stale {
            let (message, kp_ref) = self.last_resort_key_package()?;
            messages.push(message);
            last_resort_ref = Some(kp_ref);
        }
        if !messages.is_empty() {
            port.upload_key_packages(service, &messages).await?;
        }
        if let Some(kp_ref) = &last_resort_ref {
            self.last_resort_uploaded(kp_ref)?;
        }
        Ok(RefillReport { uploaded, last_resort_replaced: stale, pool: pool + uploaded })
    }

    /// Refills when a notice says this device's pool ran low or its
    /// last-resort package was handed out; `None` if nothing was needed.
    pub async fn on_notice(
        &self,
        port: &Port,
        service: &Jid,
        notice: &Notice,
    ) -> Result<Option<RefillReport>, RefillError> {
        let (needed, renew_last_resort) = match notice {
            Notice::KeyPackageClaimed(c) => (c.device == self.id() && (c.last_resort || c.remaining == 0), c.last_resort),
            Notice::KeyPackagesLow(l) => (l.device == self.id(), false),
        };
        if !needed {
            return Ok(None);
        }
        self.refill(port, service, POOL_TARGET, renew_last_resort).await.map(Some)
    }
}
