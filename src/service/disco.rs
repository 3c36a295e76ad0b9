//! XEP-0030 on the service, directory and group JIDs.

use minidom::Element;
use xmpp_parsers::disco::DiscoItemsResult;
use xmpp_parsers::jid::Jid;

use super::{Service, ServiceError};
use crate::protocol::address::Address;
use crate::protocol::disco::{
    directory_info, directory_items, group_info, node_info, service_info, AnnouncedLimits,
};
use crate::protocol::{devices, keypackages};

const DAY: u64 = 24 * 3600;

impl Service {
    pub(super) async fn disco_info(&self, address: &Address, query: &Element) -> Result<Element, ServiceError> {
        let node = query.attr("node");
        let info = match (address, node) {
            (Address::Service, None) => service_info(&self.announced_limits(self.current_external_sender().await?)),
            (Address::Directory(_), None) => directory_info(),
            (Address::Directory(_), Some(node @ (devices::NODE | keypackages::NODE))) => node_info(node),
            (Address::Group(id), None) => {
                self.require_group(id).await?;
                group_info()
            }
            _ => return Err(ServiceError::NotFound),
        };
        Ok(info.into())
    }

    /// Directories list their nodes; groups are not enumerable (privacy).
    pub(super) async fn disco_items(&self, address: &Address, query: &Element) -> Result<Element, ServiceError> {
        if query.attr("node").is_some() {
            return Err(ServiceError::NotFound);
        }
        let items = match address {
            Address::Directory(account) => {
                let jid = Jid::new(&self.directory_jid(account)).map_err(|_| ServiceError::NotFound)?;
                directory_items(jid)
            }
            Address::Group(id) => {
                self.require_group(id).await?;
                DiscoItemsResult { node: None, items: vec![], rsm: None }
            }
            Address::Service => DiscoItemsResult { node: None, items: vec![], rsm: None },
        };
        Ok(items.into())
    }

    async fn require_group(&self, id: &[u8]) -> Result<(), ServiceError> {
        if self.store.group_exists(id.to_vec()).await? {
            Ok(())
        } else {
            Err(ServiceError::UnknownGroup)
        }
    }

    fn announced_limits(&self, external_sender: Option<Vec<u8>>) -> AnnouncedLimits {
        let (l, d, g, v) = (&self.config.limits, &self.config.directory, &self.config.groups, &self.config.vault);
        AnnouncedLimits {
            max_payload_size: l.max_payload_size,
            max_stanza_out: l.max_stanza_out,
            max_devices_per_account: d.max_devices_per_account,
            max_key_packages_per_device: d.max_key_packages_per_device,
            max_key_package_size: d.max_key_package_size,
            max_key_package_lifetime: d.max_key_package_lifetime_days.saturating_mul(DAY),
            low_water: d.low_water,
            cipher_suites: d.cipher_suites.clone(),
            max_past_epochs: g.past_epochs,
            max_page_size: l.max_page_size,
            max_vault_blob_size: v.max_blob_size,
            vault_quota: v.quota_bytes,
            max_vault_blobs: v.max_blobs,
            max_members: g.max_members,
            max_groups_per_account: g.max_groups_per_account,
            claim_burst: d.claim_burst,
            claim_refill: d.claim_refill_secs,
            account_rate: l.account_rate,
            account_burst: l.account_burst,
            key_package_burst: d.key_package_burst,
            key_package_refill: d.key_package_refill_secs,
            group_archive_bytes_per_day: self.config.history.group_archive_bytes_per_day,
            account_archive_bytes_per_day: self.config.history.account_archive_bytes_per_day,
            external_sender,
        }
    }
}
