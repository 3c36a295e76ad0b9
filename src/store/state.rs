//! The Delivery Service's copy of a group's public state: openmls'
//! `PublicGroup` as one compact blob, and the proposals queued in its epoch.
//!
//! openmls reads and writes a `PublicGroup` through a storage provider.
//! [`StateCodec`] is one that keeps the values in memory, encoded with
//! postcard (compact binary serde, no field names): a merge or a proposal
//! leaves in it exactly what to store, and one built from stored octets
//! loads the group. No SQL here: the octets are the store's to keep.

use std::cell::RefCell;

use openmls::group::{GroupId, PublicGroup};
use openmls_traits::public_storage::PublicStorageProvider;
use openmls_traits::storage::{traits, Entity, CURRENT_VERSION};
use serde::{Deserialize, Serialize};

/// A group's state as stored: whole at some epoch, and the commits since.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicState {
    /// Tree, group context, interim transcript hash and confirmation tag.
    pub blob: Vec<u8>,
    /// The proposals queued in the blob's epoch: (reference, proposal).
    pub proposals: Vec<(Vec<u8>, Vec<u8>)>,
    /// The commits since the blob's epoch, in order.
    pub log: Vec<Logged>,
}

/// A commit since a group's whole state, and the proposals queued in the
/// epoch it began.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Logged {
    pub commit: Vec<u8>,
    pub proposals: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("group state encoding: {0}")]
pub struct StateError(String);

impl From<postcard::Error> for StateError {
    fn from(e: postcard::Error) -> Self {
        Self(e.to_string())
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    tree: Option<Vec<u8>>,
    context: Option<Vec<u8>>,
    transcript_hash: Option<Vec<u8>>,
    confirmation_tag: Option<Vec<u8>>,
}

/// openmls storage for one group, in memory (see the module doc).
#[derive(Default)]
pub struct StateCodec {
    parts: RefCell<Stored>,
    proposals: RefCell<Vec<(Vec<u8>, Vec<u8>)>>,
    /// Writes of the tree are dropped (see [`Self::without_tree`]).
    skip_tree: bool,
}

impl StateCodec {
    /// Loads the group kept whole in `state` (at the blob's epoch, before
    /// its log); None if the blob holds none.
    pub fn load(state: &PublicState, group_id: &[u8]) -> Result<Option<PublicGroup>, StateError> {
        let codec = Self {
            parts: RefCell::new(postcard::from_bytes(&state.blob)?),
            proposals: RefCell::new(state.proposals.clone()),
            skip_tree: false,
        };
        PublicGroup::load(&codec, &GroupId::from_slice(group_id))
    }

    /// A codec that drops what openmls writes of the tree: a merge costs
    /// no encoding of the whole tree unless [`Self::whole`] asks for it.
    pub fn without_tree() -> Self {
        Self { skip_tree: true, ..Self::default() }
    }

    /// The state written into this codec by a merge, with `pg`'s tree, as
    /// one blob: the group kept whole.
    pub fn whole(&self, pg: &PublicGroup) -> Result<Vec<u8>, StateError> {
        Self::put(&mut self.parts.borrow_mut().tree, pg.treesync())?;
        self.blob()
    }

    /// Queues `proposals` (as stored) in `pg`, in its current epoch.
    pub fn requeue(&self, pg: &mut PublicGroup, proposals: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StateError> {
        for (_, proposal) in proposals {
            let queued: openmls::group::QueuedProposal = postcard::from_bytes(proposal)?;
            pg.add_proposal(self, queued)?;
        }
        Ok(())
    }

    /// The state written into this codec (by a merge or a creation) as
    /// one blob.
    pub fn blob(&self) -> Result<Vec<u8>, StateError> {
        Ok(postcard::to_stdvec(&*self.parts.borrow())?)
    }

    /// The proposals queued through this codec since it was made.
    pub fn queued(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.proposals.borrow().clone()
    }

    fn put<T: Serialize>(slot: &mut Option<Vec<u8>>, value: &T) -> Result<(), StateError> {
        *slot = Some(postcard::to_stdvec(value)?);
        Ok(())
    }

    fn get<T: Entity<CURRENT_VERSION>>(slot: &Option<Vec<u8>>) -> Result<Option<T>, StateError> {
        slot.as_deref().map(postcard::from_bytes).transpose().map_err(StateError::from)
    }
}

impl PublicStorageProvider<CURRENT_VERSION> for StateCodec {
    type PublicError = StateError;

    fn write_tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
        tree: &T,
    ) -> Result<(), StateError> {
        match self.skip_tree {
            true => Ok(()),
            false => Self::put(&mut self.parts.borrow_mut().tree, tree),
        }
    }

    fn write_interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        hash: &H,
    ) -> Result<(), StateError> {
        Self::put(&mut self.parts.borrow_mut().transcript_hash, hash)
    }

    fn write_context<G: traits::GroupId<CURRENT_VERSION>, C: traits::GroupContext<CURRENT_VERSION>>(
        &self,
        _: &G,
        context: &C,
    ) -> Result<(), StateError> {
        Self::put(&mut self.parts.borrow_mut().context, context)
    }

    fn write_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>, C: traits::ConfirmationTag<CURRENT_VERSION>>(
        &self,
        _: &G,
        tag: &C,
    ) -> Result<(), StateError> {
        Self::put(&mut self.parts.borrow_mut().confirmation_tag, tag)
    }

    fn queue_proposal<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
        reference: &R,
        proposal: &P,
    ) -> Result<(), StateError> {
        let entry = (postcard::to_stdvec(reference)?, postcard::to_stdvec(proposal)?);
        self.proposals.borrow_mut().push(entry);
        Ok(())
    }

    fn queued_proposals<
        G: traits::GroupId<CURRENT_VERSION>,
        R: traits::ProposalRef<CURRENT_VERSION>,
        P: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Vec<(R, P)>, StateError> {
        let decode = |(r, p): &(Vec<u8>, Vec<u8>)| Ok((postcard::from_bytes(r)?, postcard::from_bytes(p)?));
        self.proposals.borrow().iter().map(decode).collect()
    }

    fn tree<G: traits::GroupId<CURRENT_VERSION>, T: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<Option<T>, StateError> {
        Self::get(&self.parts.borrow().tree)
    }

    fn group_context<G: traits::GroupId<CURRENT_VERSION>, C: traits::GroupContext<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<Option<C>, StateError> {
        Self::get(&self.parts.borrow().context)
    }

    fn interim_transcript_hash<
        G: traits::GroupId<CURRENT_VERSION>,
        H: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        _: &G,
    ) -> Result<Option<H>, StateError> {
        Self::get(&self.parts.borrow().transcript_hash)
    }

    fn confirmation_tag<G: traits::GroupId<CURRENT_VERSION>, C: traits::ConfirmationTag<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<Option<C>, StateError> {
        Self::get(&self.parts.borrow().confirmation_tag)
    }

    fn delete_tree<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> Result<(), StateError> {
        self.parts.borrow_mut().tree = None;
        Ok(())
    }

    fn delete_confirmation_tag<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> Result<(), StateError> {
        self.parts.borrow_mut().confirmation_tag = None;
        Ok(())
    }

    fn delete_context<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> Result<(), StateError> {
        self.parts.borrow_mut().context = None;
        Ok(())
    }

    fn delete_interim_transcript_hash<G: traits::GroupId<CURRENT_VERSION>>(&self, _: &G) -> Result<(), StateError> {
        self.parts.borrow_mut().transcript_hash = None;
        Ok(())
    }

    fn remove_proposal<G: traits::GroupId<CURRENT_VERSION>, R: traits::ProposalRef<CURRENT_VERSION>>(
        &self,
        _: &G,
        reference: &R,
    ) -> Result<(), StateError> {
        let key = postcard::to_stdvec(reference)?;
        self.proposals.borrow_mut().retain(|(r, _)| *r != key);
        Ok(())
    }

    fn clear_proposal_queue<G: traits::GroupId<CURRENT_VERSION>, R: traits::ProposalRef<CURRENT_VERSION>>(
        &self,
        _: &G,
    ) -> Result<(), StateError> {
        self.proposals.borrow_mut().clear();
        Ok(())
    }
}

/// Re-encodes a group kept in openmls' own (JSON) tables as a
/// [`PublicState`]; None if `legacy` holds no such group.
pub fn transcode<S: PublicStorageProvider<CURRENT_VERSION>>(
    legacy: &S,
    group_id: &[u8],
) -> Result<Option<PublicState>, StateError> {
    use openmls::messages::ConfirmationTag;
    use openmls::ciphersuite::hash_ref::ProposalRef;
    use openmls::group::{GroupContext, InterimTranscriptHash, QueuedProposal};
    use openmls::treesync::TreeSync;
    let gid = GroupId::from_slice(group_id);
    let fail = |e: S::PublicError| StateError(format!("{e:?}"));
    let Some(tree) = legacy.tree::<_, TreeSync>(&gid).map_err(fail)? else { return Ok(None) };
    let codec = StateCodec::default();
    codec.write_tree(&gid, &tree)?;
    if let Some(context) = legacy.group_context::<_, GroupContext>(&gid).map_err(fail)? {
        codec.write_context(&gid, &context)?;
    }
    if let Some(hash) = legacy.interim_transcript_hash::<_, InterimTranscriptHash>(&gid).map_err(fail)? {
        codec.write_interim_transcript_hash(&gid, &hash)?;
    }
    if let Some(tag) = legacy.confirmation_tag::<_, ConfirmationTag>(&gid).map_err(fail)? {
        codec.write_confirmation_tag(&gid, &tag)?;
    }
    for (reference, proposal) in legacy.queued_proposals::<_, ProposalRef, QueuedProposal>(&gid).map_err(fail)? {
        codec.queue_proposal(&gid, &reference, &proposal)?;
    }
    Ok(Some(PublicState { blob: codec.blob()?, proposals: codec.queued(), log: Vec::new() }))
}
