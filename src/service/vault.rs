//! The vault at an account's directory: owner only, opaque blobs, CAS.

use xmpp_parsers::jid::BareJid;

use super::{IqKind, IqRequest, Response, Service, ServiceError};
use crate::protocol::error::AppCondition;
use crate::protocol::now;
use super::archive::DEFAULT_PAGE;
use crate::protocol::vault::{list_result, vault_result, VaultItem, VaultRequest};
use crate::protocol::ProtocolError;
use crate::store::{VaultLimits, VaultWrite};

impl Service {
    pub(super) async fn vault(&self, req: &IqRequest, account: &BareJid) -> Result<Response, ServiceError> {
        if req.from.to_bare() != *account {
            return Err(ServiceError::Forbidden);
        }
        let request = VaultRequest::parse(&req.payload)?;
        let expected = match request {
            VaultRequest::Get { .. } | VaultRequest::List { .. } => IqKind::Get,
            _ => IqKind::Set,
        };
        if req.kind != expected {
            return Err(ProtocolError::Malformed("wrong IQ type for this vault action").into());
        }
        let v = &self.config.vault;
        let owner = account.to_string();
        let item = |name: String, version: u64, size: usize, data| VaultItem { name, version, size, data };
        let written = match request {
            VaultRequest::Put { name, if_version, data } => {
                if data.len() > v.max_blob_size {
                    return Err(ServiceError::Limit(AppCondition::BlobTooBig));
                }
                let size = data.len();
                let limits = VaultLimits { quota_bytes: v.quota_bytes, max_blobs: v.max_blobs };
                let outcome = self.store.vault_put(owner, name.clone(), if_version, data, limits, now()).await?;
                (name, size, outcome)
            }
            VaultRequest::Delete { name, if_version } => {
                let outcome = self.store.vault_delete(owner, name.clone(), if_version).await?;
                (name, 0, outcome)
            }
            VaultRequest::Get { name } => {
                let (version, data) = self.store.vault_get(owner, name.clone()).await?.ok_or(ServiceError::NotFound)?;
                return Ok(Response::result(vault_result(&[item(name, version, data.len(), Some(data))], None)));
            }
            VaultRequest::List { max, cursor } => {
                let max = max.unwrap_or(DEFAULT_PAGE).min(self.config.limits.max_page_size);
                let page = self.store.vault_list(owner, cursor, max).await?;
                let items: Vec<_> = page.items.into_iter().map(|(n, ver, size)| item(n, ver, size, None)).collect();
                let quota = (page.used, v.quota_bytes);
                return Ok(Response::result(list_result(&items, quota, page.first_index, page.count)));
            }
        };
        let (name, size, outcome) = written;
        match outcome {
            VaultWrite::Done { version: 0 } => Ok(Response::default()),
            VaultWrite::Done { version } => Ok(Response::result(vault_result(&[item(name, version, size, None)], None))),
            VaultWrite::Mismatch { current } => Err(ServiceError::VersionMismatch { current }),
            VaultWrite::QuotaExceeded => Err(ServiceError::Limit(AppCondition::QuotaExceeded)),
            VaultWrite::TooManyBlobs => Err(ServiceError::Limit(AppCondition::TooManyBlobs)),
            VaultWrite::NotFound => Err(ServiceError::NotFound),
        }
    }
}
