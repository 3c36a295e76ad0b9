//! Where a vault's blobs are kept (xep/ §Where the Vault Lives): in the
//! account's directory at an MLS service (this device's service, or any
//! other), or on the account's own server in private PEP nodes (XEP-0223).
//! The blobs, their names and their sealing are the same in every place;
//! only the requests differ.

use std::time::Duration;

use minidom::Element;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::DefinedCondition;

use super::{VaultError, KEYS};
use crate::client::devices::directory_jid;
use crate::client::port::Port;
use crate::client::session::ClientError;
use crate::protocol::mam::Cursor;
use crate::protocol::pubsub::{parse_items, simple_request, NS_PUBSUB};
use crate::protocol::vault::{
    create_private_node, location_element, parse_list_page, parse_location, parse_vault_result, parse_version_mismatch,
    pep_keys_node, pep_node, private_publish, VaultItem, VaultRequest, LOCATION_ITEM, LOCATION_NODE,
    PEP_MAX_BLOB, PEP_NODE,
};
use crate::protocol::NS;

const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";

/// How long a claimed but empty key record node is waited for before a
/// writer claims the next version (xep/ §The Key Record in PEP).
pub const CLAIM_GRACE: Duration = Duration::from_secs(60);
/// A claimant that could not publish within this (half the grace)
/// abandons its claim.
const CLAIM_DEADLINE: Duration = Duration::from_secs(30);
const CLAIM_POLL: Duration = Duration::from_secs(5);

/// A vault's place, as the account's location record names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The account's directory at this MLS service.
    Service(Jid),
    /// The account's own server, in private PEP nodes.
    Pep,
}

impl From<&Jid> for Location {
    fn from(service: &Jid) -> Self {
        Location::Service(service.clone())
    }
}

impl Location {
    /// The JID a location record names: the service, or the account's bare JID for PEP.
    pub fn jid(&self, account: &BareJid) -> Jid {
        match self {
            Location::Service(service) => service.clone(),
            Location::Pep => Jid::from(account.clone()),
        }
    }

    fn of(jid: Jid, account: &BareJid) -> Self {
        if jid == Jid::from(account.clone()) {
            Location::Pep
        } else {
            Location::Service(jid)
        }
    }

    /// For people: "PEP" or the service's JID.
    pub fn describe(&self) -> String {
        match self {
            Location::Service(service) => service.to_string(),
            Location::Pep => "PEP (the account's own server)".into(),
        }
    }
}

fn is_condition(e: &ClientError, conditions: &[DefinedCondition]) -> bool {
    matches!(e, ClientError::Stanza(s) if conditions.contains(&s.defined_condition))
}

/// The account's vault location: its location record, or `default` (the
/// device's service) where there is none, or the server has no PEP.
pub async fn location(port: &Port, default: &Jid) -> Result<Location, ClientError> {
    let account = port.jid().to_bare();
    let absent = [DefinedCondition::ItemNotFound, DefinedCondition::ServiceUnavailable, DefinedCondition::FeatureNotImplemented];
    match pep_item(port, &Jid::from(account.clone()), LOCATION_NODE, LOCATION_ITEM).await {
        Ok(Some(payload)) => {
            let jid = parse_location(&payload).map_err(|e| ClientError::Malformed(e.to_string()))?;
            Ok(Location::of(jid, &account))
        }
        Ok(None) => Ok(Location::Service(default.clone())),
        Err(e) if is_condition(&e, &absent) => Ok(Location::Service(default.clone())),
        Err(e) => Err(e),
    }
}

/// Writes the account's location record.
pub async fn set_location(port: &Port, location: &Location) -> Result<(), ClientError> {
    let account = port.jid().to_bare();
    let payload = location_element(&location.jid(&account));
    port.iq(&Jid::from(account), "set", private_publish(LOCATION_NODE, LOCATION_ITEM, payload)).await.map(drop)
}

/// The payload of item `id` of `node` at `jid`; None if either is absent.
async fn pep_item(port: &Port, jid: &Jid, node: &str, id: &str) -> Result<Option<Element>, ClientError> {
    match port.iq(jid, "get", simple_request("items", node, &[id], None)).await {
        Ok(reply) => {
            let items = reply.as_ref().and_then(|r| r.get_child("items", NS_PUBSUB));
            Ok(items.and_then(|items| parse_items(items, NS_PUBSUB).into_iter().find(|(i, _)| i == id)?.1))
        }
        Err(e) if is_condition(&e, &[DefinedCondition::ItemNotFound]) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `(node, name)` of the disco#items of `jid` (at `node`, if given).
async fn disco_items(port: &Port, jid: &Jid, node: Option<&str>) -> Result<Vec<(Option<String>, Option<String>)>, ClientError> {
    let mut query = Element::builder("query", NS_DISCO_ITEMS);
    if let Some(node) = node {
        query = query.attr(crate::protocol::n("node"), node);
    }
    let reply = match port.iq(jid, "get", query.build()).await {
        Err(e) if is_condition(&e, &[DefinedCondition::ItemNotFound]) => return Ok(Vec::new()),
        other => other?,
    };
    Ok(reply
        .iter()
        .flat_map(|q| q.children().filter(|c| c.is("item", NS_DISCO_ITEMS)))
        .map(|i| (i.attr("node").map(str::to_owned), i.attr("name").map(str::to_owned)))
        .collect())
}

/// A place bound to an account: where a [`super::Vault`] reads and writes.
#[derive(Debug)]
pub(crate) struct Place {
    pub(crate) location: Location,
    /// The directory JID at the service, or the account's bare JID.
    at: Jid,
    /// In PEP, the nodes known to exist with the vault's configuration.
    nodes: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Place {
    pub(crate) fn new(account: &BareJid, location: Location) -> Self {
        let at = match &location {
            Location::Service(service) => directory_jid(account, service),
            Location::Pep => Jid::from(account.clone()),
        };
        Place { location, at, nodes: Default::default() }
    }

    /// Creates the PEP node `node` with the vault's configuration unless
    /// it exists (a node that a publish creates keeps one item only), and
    /// lists it in the vault's index node.
    async fn pep_node_ready(&self, port: &Port, node: &str) -> Result<(), ClientError> {
        if self.nodes.lock().expect("not poisoned").contains(node) {
            return Ok(());
        }
        for (node, indexed) in [(PEP_NODE, None), (node, Some(node))] {
            match port.iq(&self.at, "set", create_private_node(node)).await {
                Err(e) if is_condition(&e, &[DefinedCondition::Conflict]) => {}
                other => drop(other?),
            }
            if let Some(node) = indexed {
                let entry = private_publish(PEP_NODE, node, Element::builder("vault-node", NS).build());
                port.iq(&self.at, "set", entry).await?;
            }
        }
        self.nodes.lock().expect("not poisoned").insert(node.to_owned());
        Ok(())
    }

    /// The largest blob this place takes: the service's max-vault-blob-size,
    /// or [`PEP_MAX_BLOB`].
    pub(crate) async fn max_blob(&self, port: &Port) -> Result<usize, ClientError> {
        let Location::Service(service) = &self.location else { return Ok(PEP_MAX_BLOB) };
        let limits = port.service_limits(service).await?;
        limits
            .iter()
            .find(|(var, _)| var == "max-vault-blob-size")
            .and_then(|(_, values)| values.first()?.parse().ok())
            .ok_or_else(|| ClientError::Malformed("no max-vault-blob-size in the service's limits".into()))
    }

    async fn request(&self, port: &Port, req: VaultRequest) -> Result<Vec<VaultItem>, ClientError> {
        let type_ = if matches!(req, VaultRequest::Get { .. } | VaultRequest::List { .. }) { "get" } else { "set" };
        match port.iq(&self.at, type_, req.to_element()).await? {
            Some(el) => parse_vault_result(&el).map(|(items, _)| items).map_err(|e| ClientError::Malformed(e.to_string())),
            None => Ok(Vec::new()),
        }
    }

    /// The blob `name` with its version and data; None if absent.
    pub(crate) async fn get(&self, port: &Port, name: &str) -> Result<Option<(u64, Vec<u8>)>, ClientError> {
        if self.location == Location::Pep {
            return pep_blob(port, &self.at, &pep_node(name), name).await;
        }
        match self.request(port, VaultRequest::Get { name: name.to_owned() }).await {
            Ok(items) => Ok(items.into_iter().next().and_then(|i| Some((i.version, i.data?)))),
            Err(e) if is_condition(&e, &[DefinedCondition::ItemNotFound]) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `data` as version `if_version + 1` of `name`. At a service,
    /// only if the blob is at `if_version` (compare-and-swap); in PEP,
    /// whose publish replaces an item unconditionally, every blob but the
    /// key record has one writer, which knows the version.
    pub(crate) async fn put(&self, port: &Port, name: &str, if_version: u64, data: Vec<u8>) -> Result<u64, VaultError> {
        if self.location == Location::Pep {
            let item = VaultItem { name: name.to_owned(), version: if_version + 1, size: data.len(), data: Some(data) };
            self.pep_node_ready(port, &pep_node(name)).await?;
            port.iq(&self.at, "set", private_publish(&pep_node(name), name, item.to_element())).await?;
            return Ok(item.version);
        }
        let put = VaultRequest::Put { name: name.to_owned(), if_version, data };
        let items = self.request(port, put).await.map_err(|e| conflict(e, name))?;
        Ok(items.first().map_or(if_version + 1, |i| i.version))
    }

    /// Deletes `name` if it is at `if_version` (at a service; in PEP, its one
    /// writer knows); false if it was absent.
    pub(crate) async fn delete(&self, port: &Port, name: &str, if_version: u64) -> Result<bool, VaultError> {
        let result = if self.location == Location::Pep {
            port.iq(&self.at, "set", simple_request("retract", &pep_node(name), &[name], None)).await.map(drop)
        } else {
            self.request(port, VaultRequest::Delete { name: name.to_owned(), if_version }).await.map(drop)
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) if is_condition(&e, &[DefinedCondition::ItemNotFound]) => Ok(false),
            Err(e) => Err(conflict(e, name)),
        }
    }

    /// The names of the blobs that start with `prefix` ("" for all), the
    /// key record excluded, in octet order.
    pub(crate) async fn names(&self, port: &Port, prefix: &str) -> Result<Vec<String>, ClientError> {
        let mut names = match self.location {
            Location::Pep => self.pep_names(port, prefix).await?,
            Location::Service(_) => self.service_listing(port, prefix).await?.into_iter().map(|i| i.name).collect(),
        };
        names.retain(|n| n.starts_with(prefix) && n != KEYS);
        names.sort();
        Ok(names)
    }

    /// (name, version, sealed size) of the blobs that start with `prefix`,
    /// the key record excluded, in octet order: at a service from its
    /// listing, in PEP by reading each.
    pub(crate) async fn stat(&self, port: &Port, prefix: &str) -> Result<Vec<(String, u64, usize)>, ClientError> {
        if self.location != Location::Pep {
            let items = self.service_listing(port, prefix).await?;
            return Ok(items.into_iter().filter(|i| i.name != KEYS).map(|i| (i.name, i.version, i.size)).collect());
        }
        let mut out = Vec::new();
        for name in self.names(port, prefix).await? {
            if let Some((version, data)) = self.get(port, &name).await? {
                out.push((name, version, data.len()));
            }
        }
        Ok(out)
    }

    /// Deletes every blob whose name starts with `prefix`, by the
    /// versions a service lists (a PEP item has one writer).
    pub(crate) async fn delete_prefix(&self, port: &Port, prefix: &str) -> Result<(), VaultError> {
        let blobs: Vec<(String, u64)> = match self.location {
            Location::Pep => self.names(port, prefix).await?.into_iter().map(|n| (n, 0)).collect(),
            Location::Service(_) => self.service_listing(port, prefix).await?.into_iter().map(|i| (i.name, i.version)).collect(),
        };
        for (name, version) in blobs {
            self.delete(port, &name, version).await?;
        }
        Ok(())
    }

    /// Pages through the listing (xep/ §Listing the Vault) from just
    /// before `prefix` (after it less its last character, so that a blob
    /// named `prefix` is listed too) until the names pass the prefix, the
    /// count is reached or a page is empty.
    async fn service_listing(&self, port: &Port, prefix: &str) -> Result<Vec<VaultItem>, ClientError> {
        let malformed = |e: crate::protocol::ProtocolError| ClientError::Malformed(e.to_string());
        let mut all: Vec<VaultItem> = Vec::new();
        let mut after = (prefix.len() > 1).then(|| prefix[..prefix.len() - 1].to_owned());
        loop {
            let cursor = after.clone().map_or(Cursor::First, Cursor::After);
            let reply = port.iq(&self.at, "get", VaultRequest::List { max: None, cursor }.to_element()).await?;
            let reply = reply.ok_or_else(|| ClientError::Malformed("empty vault listing".into()))?;
            let (items, _) = parse_vault_result(&reply).map_err(malformed)?;
            let (first, count) = parse_list_page(&reply).unwrap_or((0, 0));
            let Some(last) = items.last().map(|i| i.name.clone()) else { return Ok(all) };
            if after.as_ref().is_some_and(|after| items[0].name <= *after) {
                return Err(ClientError::Malformed("a vault listing page does not advance".into()));
            }
            let (past, page) = (last.as_str() > prefix && !last.starts_with(prefix), items.len());
            all.extend(items.into_iter().filter(|i| i.name.starts_with(prefix)));
            if past || first + page >= count {
                return Ok(all);
            }
            after = Some(last);
        }
    }

    /// The item IDs of the account's vault nodes that can hold `prefix`.
    async fn pep_names(&self, port: &Port, prefix: &str) -> Result<Vec<String>, ClientError> {
        let nodes: Vec<String> = if prefix.matches('/').count() >= 2 {
            vec![pep_node(prefix)]
        } else {
            self.vault_nodes(port).await?
        };
        let mut names = Vec::new();
        for node in nodes {
            names.extend(disco_items(port, &self.at, Some(&node)).await?.into_iter().filter_map(|(_, name)| name));
        }
        Ok(names)
    }

    /// The account's PEP nodes that hold blobs: those its index node lists
    /// and those the server lists (either may miss some: a server may list
    /// only some of an account's nodes, and drops an index's oldest items).
    async fn vault_nodes(&self, port: &Port) -> Result<Vec<String>, ClientError> {
        let prefix = format!("{PEP_NODE}/");
        let indexed = disco_items(port, &self.at, Some(PEP_NODE)).await?.into_iter().filter_map(|(_, name)| name);
        let listed = disco_items(port, &self.at, None).await?.into_iter().filter_map(|(node, _)| node);
        let nodes: std::collections::BTreeSet<String> = indexed.chain(listed).filter(|n| n.starts_with(&prefix)).collect();
        Ok(nodes.into_iter().collect())
    }

    /// The key record: its version and data; None if the vault is not set up.
    pub(crate) async fn keys(&self, port: &Port) -> Result<Option<(u64, Vec<u8>)>, ClientError> {
        if self.location != Location::Pep {
            return self.get(port, KEYS).await;
        }
        for version in (1..=self.highest_claim(port).await?).rev() {
            if let Some(found) = self.claimed(port, version).await? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The key record written into claim `version`; None if it is empty or absent.
    async fn claimed(&self, port: &Port, version: u64) -> Result<Option<(u64, Vec<u8>)>, ClientError> {
        pep_blob(port, &self.at, &pep_keys_node(version), KEYS).await
    }

    /// Whether the node of claim `version` exists (written or not).
    async fn claim_exists(&self, port: &Port, version: u64) -> Result<bool, ClientError> {
        let items = simple_request("items", &pep_keys_node(version), &[], None);
        match port.iq(&self.at, "get", items).await {
            Ok(_) => Ok(true),
            Err(e) if is_condition(&e, &[DefinedCondition::ItemNotFound]) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The highest claim (0: none). Claims are numbered from 1 without gaps,
    /// so doubling then halving finds it in O(log n) requests, without a
    /// listing of the account's nodes (which a server may cut short).
    async fn highest_claim(&self, port: &Port) -> Result<u64, ClientError> {
        if !self.claim_exists(port, 1).await? {
            return Ok(0);
        }
        let mut low = 1; // exists
        while self.claim_exists(port, low * 2).await? {
            low *= 2;
        }
        let mut high = low * 2; // does not exist
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if self.claim_exists(port, mid).await? {
                low = mid;
            } else {
                high = mid;
            }
        }
        Ok(low)
    }

    /// Writes the key record over version `if_version` (0: sets the vault
    /// up). In PEP, by claiming the next version's node: creating a node
    /// that exists fails, so of two writers from one version one wins.
    pub(crate) async fn put_keys(&self, port: &Port, if_version: u64, data: Vec<u8>) -> Result<u64, VaultError> {
        if self.location != Location::Pep {
            return self.put(port, KEYS, if_version, data).await;
        }
        let version = self.next_claim(port, if_version).await?;
        let started = port.now();
        if let Err(e) = port.iq(&self.at, "set", create_private_node(&pep_keys_node(version))).await {
            // Lost to a concurrent create: <conflict/>, or, from some servers, an internal error.
            return match self.claim_exists(port, version).await? {
                true => Err(VaultError::Conflict(KEYS.into(), version)),
                false => Err(e.into()),
            };
        }
        if port.now() - started > CLAIM_DEADLINE {
            return Err(VaultError::Conflict(KEYS.into(), version)); // abandoned: a writer may have moved past it
        }
        let item = VaultItem { name: KEYS.into(), version, size: data.len(), data: Some(data) };
        port.iq(&self.at, "set", private_publish(&pep_keys_node(version), KEYS, item.to_element())).await?;
        Ok(version)
    }

    /// The version to claim after `if_version`: the next one, or, past
    /// claims that stayed empty for [`CLAIM_GRACE`] (their writers died),
    /// the one after the highest. A written claim above means the record
    /// changed: a conflict.
    async fn next_claim(&self, port: &Port, if_version: u64) -> Result<u64, VaultError> {
        let since = port.now();
        loop {
            let highest = self.highest_claim(port).await?;
            if highest <= if_version {
                return Ok(if_version + 1);
            }
            for v in if_version + 1..=highest {
                if self.claimed(port, v).await?.is_some() {
                    return Err(VaultError::Conflict(KEYS.into(), v));
                }
            }
            if port.now() - since >= CLAIM_GRACE {
                return Ok(highest + 1);
            }
            port.sleep(CLAIM_POLL).await;
        }
    }

    /// Deletes every blob and the key record: after a move, what the old
    /// place held. The key record goes first, so that a device opening
    /// this place meanwhile finds no vault rather than a partial one.
    pub(crate) async fn erase(&self, port: &Port) -> Result<(), VaultError> {
        if self.location != Location::Pep {
            let blobs = self.stat(port, "").await?;
            if let Some((version, _)) = self.get(port, KEYS).await? {
                self.delete(port, KEYS, version).await?;
            }
            for (name, version, _) in blobs {
                self.delete(port, &name, version).await?;
            }
            return Ok(());
        }
        let claims = (1..=self.highest_claim(port).await?).map(pep_keys_node);
        let nodes: Vec<String> = claims.chain(self.vault_nodes(port).await?).chain([PEP_NODE.to_owned()]).collect();
        for node in nodes {
            let delete = Element::builder("delete", NS_PUBSUB_OWNER).attr(crate::protocol::n("node"), node.as_str()).build();
            let pubsub = Element::builder("pubsub", NS_PUBSUB_OWNER).append(delete).build();
            match port.iq(&self.at, "set", pubsub).await {
                Err(e) if is_condition(&e, &[DefinedCondition::ItemNotFound]) => {}
                other => drop(other?),
            }
        }
        Ok(())
    }
}

/// A blob in PEP: item `name` of `node`, whose payload is the `<item/>` a
/// service's `<get/>` returns. A payload naming another blob is refused.
async fn pep_blob(port: &Port, at: &Jid, node: &str, name: &str) -> Result<Option<(u64, Vec<u8>)>, ClientError> {
    let Some(payload) = pep_item(port, at, node, name).await? else { return Ok(None) };
    let item = (payload.is("item", NS)).then(|| VaultItem::parse(&payload).ok()).flatten();
    match item {
        Some(VaultItem { name: n, version, data, .. }) if n == name => Ok(Some((version, data.unwrap_or_default()))),
        _ => Err(ClientError::Malformed(format!("the PEP item of {name} is not its blob"))),
    }
}

/// A lost compare-and-swap as [`VaultError::Conflict`]; other errors as they are.
pub(crate) fn conflict(e: ClientError, name: &str) -> VaultError {
    match &e {
        ClientError::Stanza(s) => match s.other.as_ref().and_then(parse_version_mismatch) {
            Some(current) => VaultError::Conflict(name.to_owned(), current),
            None => VaultError::Client(e),
        },
        _ => VaultError::Client(e),
    }
}

