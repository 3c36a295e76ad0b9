//! Decoding the MLS objects of xep/ (TLS-serialised MLSMessages, RFC 9420
//! §6) into what the Delivery Service may read: public handshakes, the
//! public header of PrivateMessages, GroupInfos with their ratchet tree.

use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::{
    ContentType, MlsMessageBodyIn, MlsMessageIn, PrivateMessageIn, PublicMessageIn, RatchetTreeIn, Welcome,
};
use tls_codec::Deserialize;

/// Why an MLS object is refused; the `reason` of `<invalid-message/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not the TLS encoding of the expected kind of MLSMessage.
    Malformed,
    /// Its group_id is not the group of the JID it was sent to.
    WrongGroup,
    /// A handshake sent as something else than a PublicMessage, or an
    /// application message that is not a PrivateMessage.
    WrongWireFormat,
    /// Not the content type the request carries (e.g. a proposal in `<commit/>`).
    WrongContentType,
    BadSignature,
    /// A leaf's credential is not the account it should be.
    ForeignIdentity,
    /// A leaf's signature key is not a live device of its account.
    UnknownSignatureKey,
    /// The GroupInfo does not describe the epoch the commit creates.
    GroupInfoMismatch,
    /// Members are added but no Welcome comes with the commit.
    MissingWelcome,
    /// An external Commit removes a leaf of another account than the joiner's.
    ForeignRemoval,
    /// A creation's GroupInfo without the ratchet_tree extension.
    MissingTree,
    /// Breaks another RFC 9420 rule (openmls' validation).
    Invalid,
}

impl Invalid {
    pub const ALL: [Invalid; 12] = [
        Invalid::Malformed,
        Invalid::WrongGroup,
        Invalid::WrongWireFormat,
        Invalid::WrongContentType,
        Invalid::BadSignature,
        Invalid::ForeignIdentity,
        Invalid::UnknownSignatureKey,
        Invalid::GroupInfoMismatch,
        Invalid::MissingWelcome,
        Invalid::ForeignRemoval,
        Invalid::MissingTree,
        Invalid::Invalid,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed",
            Invalid::WrongGroup => "wrong-group",
            Invalid::WrongWireFormat => "wrong-wire-format",
            Invalid::WrongContentType => "wrong-content-type",
            Invalid::BadSignature => "bad-signature",
            Invalid::ForeignIdentity => "foreign-identity",
            Invalid::UnknownSignatureKey => "unknown-signature-key",
            Invalid::GroupInfoMismatch => "group-info-mismatch",
            Invalid::MissingWelcome => "missing-welcome",
            Invalid::ForeignRemoval => "foreign-removal",
            Invalid::MissingTree => "missing-tree",
            Invalid::Invalid => "invalid",
        }
    }
}

fn body(bytes: &[u8]) -> Result<MlsMessageBodyIn, Invalid> {
    MlsMessageIn::tls_deserialize_exact(bytes).map(MlsMessageIn::extract).map_err(|_| Invalid::Malformed)
}

/// A handshake of `group_id`: a PublicMessage of content type `want`.
pub fn public_message(bytes: &[u8], group_id: &[u8], want: ContentType) -> Result<PublicMessageIn, Invalid> {
    let MlsMessageBodyIn::PublicMessage(m) = body(bytes)? else { return Err(Invalid::WrongWireFormat) };
    if m.group_id().as_slice() != group_id {
        return Err(Invalid::WrongGroup);
    }
    if m.content_type() != want {
        return Err(Invalid::WrongContentType);
    }
    Ok(m)
}

/// The public header of an application message of `group_id`: its epoch.
pub fn application_epoch(bytes: &[u8], group_id: &[u8]) -> Result<u64, Invalid> {
    let MlsMessageBodyIn::PrivateMessage(m) = body(bytes)? else { return Err(Invalid::WrongWireFormat) };
    let m: PrivateMessageIn = m;
    if m.group_id().as_slice() != group_id {
        return Err(Invalid::WrongGroup);
    }
    if m.content_type() != ContentType::Application {
        return Err(Invalid::WrongContentType);
    }
    Ok(m.epoch().as_u64())
}

/// A GroupInfo of `group_id`, with its ratchet tree if it carries one.
/// The external_pub extension is required (RFC 9420 §12.4.3.2): a joiner
/// by external Commit needs it; the tree may come from the service instead
/// (xep/ §Fetching the Ratchet Tree).
pub fn group_info(bytes: &[u8], group_id: &[u8]) -> Result<(VerifiableGroupInfo, Option<RatchetTreeIn>), Invalid> {
    let MlsMessageBodyIn::GroupInfo(gi) = body(bytes)? else { return Err(Invalid::Malformed) };
    if gi.group_id().as_slice() != group_id {
        return Err(Invalid::WrongGroup);
    }
    gi.extensions().external_pub().ok_or(Invalid::Malformed)?;
    let tree = gi.extensions().ratchet_tree().map(|t| t.ratchet_tree().clone());
    Ok((gi, tree))
}

/// A ratchet tree (its TLS encoding, `optional<Node> ratchet_tree<V>`) cut
/// into pages of whole nodes, each at most `budget` octets unless one node
/// alone is larger: the nodes' encodings, concatenated.
pub fn tree_pages(tree: &[u8], budget: usize) -> Result<Vec<Vec<u8>>, Invalid> {
    use tls_codec::{Size as _, VLBytes};
    let parsed = RatchetTreeIn::tls_deserialize_exact(tree).map_err(|_| Invalid::Malformed)?;
    let content = VLBytes::tls_deserialize_exact(tree).map_err(|_| Invalid::Malformed)?;
    let content = content.as_slice();
    // A blank slot is one octet (0); a full one, 1 and its node.
    let mut full = parsed.nodes().map(|node| 1 + node.tls_serialized_len());
    let (mut pages, mut at): (Vec<Vec<u8>>, usize) = (Vec::new(), 0);
    while at < content.len() {
        let len = match content[at] {
            0 => 1,
            _ => full.next().ok_or(Invalid::Malformed)?,
        };
        let node = content.get(at..at + len).ok_or(Invalid::Malformed)?;
        match pages.last_mut() {
            Some(page) if page.len() + len <= budget => page.extend_from_slice(node),
            _ => pages.push(node.to_vec()),
        }
        at += len;
    }
    Ok(pages)
}

/// The ratchet tree whose pages (from [`tree_pages`], in order) are
/// `pages`. Decoding is all this checks: the tree is trusted only once its
/// hash matches a signed GroupContext.
pub fn tree_from_pages(pages: &[Vec<u8>]) -> Result<RatchetTreeIn, Invalid> {
    use tls_codec::{Serialize as _, VLBytes};
    let encoded = VLBytes::new(pages.concat()).tls_serialize_detached().map_err(|_| Invalid::Malformed)?;
    RatchetTreeIn::tls_deserialize_exact(encoded).map_err(|_| Invalid::Malformed)
}

pub fn welcome(bytes: &[u8]) -> Result<Welcome, Invalid> {
    match body(bytes)? {
        MlsMessageBodyIn::Welcome(w) => Ok(w),
        _ => Err(Invalid::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use openmls::group::{GroupId, MlsGroup, MlsGroupCreateConfig};
    use openmls::prelude::{BasicCredential, CredentialWithKey, KeyPackage};
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;
    use tls_codec::Serialize as _;

    use super::*;
    use crate::client::CIPHERSUITE;

    fn credential(name: &str, signer: &SignatureKeyPair) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(format!("xmpp:{name}@example.org").into_bytes()).into(),
            signature_key: signer.to_public_vec().into(),
        }
    }

    /// Pages hold whole nodes within the budget, and put together again
    /// they are the tree, octet for octet.
    #[test]
    fn a_tree_cut_into_pages_is_the_same_tree_again() {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
        let config = MlsGroupCreateConfig::builder().ciphersuite(CIPHERSUITE).build();
        let mut group =
            MlsGroup::new_with_group_id(&provider, &signer, &config, GroupId::from_slice(b"g"), credential("owner", &signer)).unwrap();
        let kps: Vec<KeyPackage> = (0..6)
            .map(|i| {
                let s = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
                KeyPackage::builder().build(CIPHERSUITE, &provider, &s, credential(&format!("m{i}"), &s)).unwrap().key_package().clone()
            })
            .collect();
        group.add_members(&provider, &signer, &kps).unwrap();
        group.merge_pending_commit(&provider).unwrap();
        let tree = group.export_ratchet_tree().tls_serialize_detached().unwrap();
        let budget = 600;
        let pages = tree_pages(&tree, budget).unwrap();
        assert!(pages.len() >= 3, "{} pages", pages.len());
        assert!(pages.iter().all(|p| p.len() <= budget), "{:?}", pages.iter().map(Vec::len).collect::<Vec<_>>());
        assert_eq!(tree_from_pages(&pages).unwrap().tls_serialize_detached().unwrap(), tree);
        assert_eq!(tree_pages(&tree, usize::MAX).unwrap().len(), 1);
        let mut cut = pages.clone();
        cut[1].pop();
        assert_eq!(tree_from_pages(&cut).unwrap_err(), Invalid::Malformed, "a page cut short does not decode");
    }
}
