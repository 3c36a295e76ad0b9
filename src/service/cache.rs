//! Groups' `PublicGroup`s kept in memory between handshakes, so that a
//! commit is validated without decoding the group's stored state.
//!
//! An entry is the group at one version (epoch, proposals queued in it) and
//! is used only while the store is at that version: whatever moved the
//! group elsewhere (this process, another one, an administrator) makes it
//! stale. A handshake takes the entry out while validating it and puts the
//! result back once the store accepted it, so a second handshake of the
//! group meanwhile loads its own copy from the store. At most
//! `groups.cached_groups` entries; the least recently used goes first.

use std::collections::HashMap;
use std::sync::Mutex;

use openmls::group::PublicGroup;

/// A version of a group's public state: its epoch and the number of
/// proposals queued in it.
pub(super) type Version = (u64, u64);

pub(super) struct GroupCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Vec<u8>, Entry>,
    clock: u64,
}

struct Entry {
    version: Version,
    group: PublicGroup,
    used: u64,
}

impl GroupCache {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, inner: Mutex::default() }
    }

    /// Takes the group out if it is cached at `version`; an entry of an
    /// earlier version is dropped, one of a later version kept.
    pub fn take(&self, group_id: &[u8], version: Version) -> Option<PublicGroup> {
        let mut inner = self.inner.lock().expect("cache lock");
        let cached = inner.entries.get(group_id)?.version;
        if cached > version {
            return None;
        }
        let entry = inner.entries.remove(group_id)?;
        (cached == version).then_some(entry.group)
    }

    /// Keeps `group` at `version`, evicting the least recently used entry
    /// if the cache is full.
    pub fn put(&self, group_id: &[u8], version: Version, group: PublicGroup) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.inner.lock().expect("cache lock");
        inner.clock += 1;
        let used = inner.clock;
        if inner.entries.len() >= self.capacity && !inner.entries.contains_key(group_id) {
            let oldest = inner.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                inner.entries.remove(&oldest);
            }
        }
        inner.entries.insert(group_id.to_vec(), Entry { version, group, used });
    }
}
