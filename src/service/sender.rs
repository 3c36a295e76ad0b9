//! The service as an MLS external sender (xep/ §Service Removals): its key,
//! the `external_senders` entry groups must carry, and the Remove
//! proposals it issues for leaves whose device left its account's list.

use openmls::group::PublicGroup;
use openmls::prelude::{
    BasicCredential, ContentType, ExternalProposal, ExternalSender, LeafNodeIndex, ProcessedMessageContent,
    ProtocolMessage, SenderExtensionIndex, SignatureScheme,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::{OpenMlsRustCrypto, RustCrypto};
use tls_codec::Serialize;

use super::groups::{encoded, library, processing, version, Delivered};
use super::{Service, ServiceError};
use crate::protocol::groups::Kind;
use crate::protocol::mls::{self, Invalid};
use crate::store::state::StateCodec;
use crate::store::{GroupTx, ServiceKey};

/// The archive's sender of the service's own proposals (no device).
pub(super) const SERVICE_SENDER: &str = "";

/// The copies of one archived message, to go out in its group's archive order.
#[derive(Debug)]
pub struct Issued {
    pub order: (Vec<u8>, u64),
    pub copies: super::Copies,
}

/// A fresh Ed25519 key for the service.
pub fn new_key() -> ServiceKey {
    use openmls_traits::crypto::OpenMlsCrypto as _;
    let (private, public) = RustCrypto::default().signature_key_gen(SignatureScheme::ED25519).expect("Ed25519 key generation");
    ServiceKey { private, public }
}

/// The `external_senders` entry of the service `component` with `key`:
/// a BasicCredential `xmpp:<component>` and the key.
pub fn external_sender(component: &str, key: &ServiceKey) -> ExternalSender {
    let credential = BasicCredential::new(format!("xmpp:{component}").into_bytes());
    ExternalSender::new(key.public.clone().into(), credential.into())
}

/// [`external_sender`], TLS-serialised as advertised in disco#info.
pub fn external_sender_bytes(component: &str, key: &ServiceKey) -> Vec<u8> {
    external_sender(component, key).tls_serialize_detached().expect("an ExternalSender serialises")
}

/// Whether `senders` lists the service with `key`.
pub(super) fn lists(senders: Option<&Vec<ExternalSender>>, component: &str, key: &ServiceKey) -> bool {
    position(senders, component, std::slice::from_ref(key)).is_some()
}

/// The service's index in `senders` and the key listed there (the newest
/// of `keys` that is).
fn position<'k>(
    senders: Option<&Vec<ExternalSender>>,
    component: &str,
    keys: &'k [ServiceKey],
) -> Option<(SenderExtensionIndex, &'k ServiceKey)> {
    let senders = senders?;
    keys.iter().find_map(|key| {
        let ours = external_sender(component, key);
        let at = senders.iter().position(|s| *s == ours)?;
        Some((SenderExtensionIndex::new(at as u32), key))
    })
}

/// Signs, validates, queues and archives a Remove proposal of the service
/// for every leaf of the group whose signature key is no longer a live
/// device of its account and that has none in this epoch yet; `pg` (the
/// group as the transaction has it) queues them too. Groups that do not
/// list the service as an external sender get none. (Signing and checking
/// a proposal costs two signature operations, and only leaves of devices
/// that left have any: these stay in the deciding transaction.)
pub(super) fn propose_removals(
    tx: &GroupTx<'_>,
    crypto: &RustCrypto,
    component: &str,
    pg: &mut PublicGroup,
) -> Result<Vec<Delivered>, ServiceError> {
    let epoch = pg.group_context().epoch().as_u64();
    let stale = tx.stale_leaves(epoch)?;
    let keys = tx.service_keys()?;
    let listed = position(pg.group_context().extensions().external_senders(), component, &keys);
    let (Some((index, key)), false) = (listed, stale.is_empty()) else {
        tx.forget_service_proposals(epoch)?;
        return Ok(Vec::new());
    };
    let signer = SignatureKeyPair::from_raw(SignatureScheme::ED25519, key.private.clone(), key.public.clone());
    let group_id = pg.group_id().clone();
    let mut delivered = Vec::new();
    let codec = StateCodec::default();
    for leaf in stale {
        let proposal = ExternalProposal::new_remove::<OpenMlsRustCrypto>(
            LeafNodeIndex::new(leaf),
            group_id.clone(),
            pg.group_context().epoch(),
            &signer,
            index,
        )
        .map_err(library)?;
        let message = encoded(&proposal)?;
        let public = mls::public_message(&message, group_id.as_slice(), ContentType::Proposal)
            .map_err(ServiceError::InvalidMessage)?;
        let processed = pg.process_message(crypto, ProtocolMessage::from(public)).map_err(processing)?;
        let ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else {
            return Err(ServiceError::InvalidMessage(Invalid::WrongContentType));
        };
        pg.add_proposal(&codec, *queued).map_err(library)?;
        let archived = tx.append(SERVICE_SENDER, epoch, Kind::Proposal, SERVICE_SENDER, None, &message)?;
        tx.record_service_proposal(epoch, leaf)?;
        delivered.push(Delivered {
            archived,
            epoch,
            kind: Kind::Proposal,
            sender_device: SERVICE_SENDER.to_owned(),
            epoch_check: None,
            message,
            feed: tx.feed()?,
            removed: Vec::new(),
            welcome: None,
        });
    }
    if !tx.queue_proposals(epoch, &codec.queued())? {
        return Err(ServiceError::Store(crate::store::StoreError::Batch("the group left the epoch".into())));
    }
    tx.forget_service_proposals(epoch)?;
    Ok(delivered)
}

impl Service {
    /// The service's current external-sender entry, TLS-serialised, if it
    /// has a key.
    pub(super) async fn current_external_sender(&self) -> Result<Option<Vec<u8>>, ServiceError> {
        let keys = self.store.service_keys().await?;
        Ok(keys.first().map(|k| external_sender_bytes(&self.config.component.jid, k)))
    }

    /// The stanzas of delivered messages, each batch in its group's order.
    pub(super) fn issued(&self, group_id: &[u8], delivered: &[Delivered]) -> Vec<Issued> {
        delivered
            .iter()
            .map(|d| Issued { order: (group_id.to_vec(), d.archived.seq), copies: self.fan_out(group_id, d, None) })
            .collect()
    }

    /// Issues the service's Remove proposals in `groups` (see
    /// [`propose_removals`]); a group that fails is logged and skipped.
    pub(super) async fn issue_removals(&self, groups: Vec<Vec<u8>>) -> Vec<Issued> {
        let mut issued = Vec::new();
        for gid in groups {
            match self.issue_removals_in(&gid).await {
                Ok(delivered) => issued.extend(self.issued(&gid, &delivered)),
                Err(e) => tracing::warn!(error = %e, "cannot issue the service's Remove proposals"),
            }
        }
        issued
    }

    /// [`propose_removals`] in one group, against its cached state if that
    /// is still the group's (else nothing: the handshake that moved the
    /// group proposed what was due).
    async fn issue_removals_in(&self, gid: &[u8]) -> Result<Vec<Delivered>, ServiceError> {
        let Some(state) = self.store.group_state(gid.to_vec()).await? else { return Ok(Vec::new()) };
        let (state, mut pg) = match self.public_group(gid, state).await {
            Err(ServiceError::WrongEpoch(_)) => return Ok(Vec::new()),
            found => found?,
        };
        let (crypto, component) = (self.crypto.clone(), self.config.component.jid.clone());
        let (delivered, pg) = self
            .store
            .group_tx(gid.to_vec(), move |tx| {
                if tx.state()?.as_ref().map(version) != Some(version(&state)) {
                    return Ok((Vec::new(), None));
                }
                let delivered = propose_removals(tx, &crypto, &component, &mut pg)?;
                Ok::<_, ServiceError>((delivered, Some((version(&state), pg))))
            })
            .await?;
        if let Some(((epoch, queued), pg)) = pg {
            self.states.put(gid, (epoch, queued + delivered.len() as u64), pg);
        }
        Ok(delivered)
    }
}
