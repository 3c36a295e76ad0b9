//! XEP-0030 on the service, directory and group JIDs.

use minidom::Element;
use xmpp_parsers::disco::DiscoItemsResult;

use super::{Service, ServiceError};
use crate::protocol::address::Address;
use crate::protocol::disco::{directory_info, group_info, service_info, AnnouncedLimits};

impl Service {
    pub(super) async fn disco_info(
        &self,
        address: &Address,
        query: &Element,
    ) -> Result<Element, ServiceError> {
        self.check_exists(address, query).await?;
        let info = match address {
            Address::Service => service_info(&AnnouncedLimits {
                max_payload_size: self.config.limits.max_payload_size,
            }),
            Address::Directory(_) => directory_info(),
            Address::Group(_) => group_info(),
        };
        Ok(info.into())
    }

    /// No entity lists items yet: groups are not enumerable (privacy).
    pub(super) async fn disco_items(
        &self,
        address: &Address,
        query: &Element,
    ) -> Result<Element, ServiceError> {
        self.check_exists(address, query).await?;
        Ok(DiscoItemsResult { node: None, items: vec![], rsm: None }.into())
    }

    /// Groups exist once created; nodes other than the root do not exist yet.
    async fn check_exists(&self, address: &Address, query: &Element) -> Result<(), ServiceError> {
        if query.attr("node").is_some() {
            return Err(ServiceError::UnknownNode);
        }
        if let Address::Group(id) = address {
            if !self.store.group_exists(id.clone()).await? {
                return Err(ServiceError::UnknownGroup);
            }
        }
        Ok(())
    }
}
