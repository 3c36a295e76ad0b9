//! The vault (xep/ §Vault): named, versioned, opaque blobs at an account's
//! directory JID, owner only, written with compare-and-swap.

use minidom::Element;
use xmpp_parsers::jid::Jid;

use super::mam::{parse_rsm, parse_rsm_result, rsm_request, rsm_result, Cursor, NS_RSM};
use super::{attr, b64_decode, b64_encode, known_children, malformed, n, ProtocolError, NS, NS_ERRORS};

pub const MAX_NAME: usize = 128;
/// Bytes one `<item/>` of a listing takes at most (tested below).
pub const MAX_LIST_ITEM: usize = 256;

/// Blob names: 1 to 128 of `A-Z a-z 0-9 . _ - /`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
}

/// One action in `<vault xmlns='urn:xmpp:mls:0'>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultRequest {
    /// Write `data` if the blob's current version is `if_version` (0: absent).
    Put { name: String, if_version: u64, data: Vec<u8> },
    Get { name: String },
    /// One page of the listing (XEP-0059): at most `max` blobs from `cursor`.
    List { max: Option<usize>, cursor: Cursor },
    /// Delete if the current version is `if_version`.
    Delete { name: String, if_version: u64 },
}

fn name_of(el: &Element) -> Result<String, ProtocolError> {
    let name = attr(el, "name", "vault item without name")?;
    valid_name(name).then(|| name.to_owned()).ok_or(malformed("invalid vault item name"))
}

fn version_of(el: &Element) -> Result<u64, ProtocolError> {
    attr(el, "if-version", "write without if-version")?.parse().map_err(|_| malformed("if-version is a number"))
}

impl VaultRequest {
    pub fn parse(vault: &Element) -> Result<Self, ProtocolError> {
        let mut actions = vault.children();
        let (Some(action), None) = (actions.next(), actions.next()) else {
            return Err(malformed("a vault request carries one action"));
        };
        if action.ns() != NS {
            return Err(malformed("vault action in a foreign namespace"));
        }
        known_children(action, &[])?;
        Ok(match action.name() {
            "put" => VaultRequest::Put { name: name_of(action)?, if_version: version_of(action)?, data: b64_decode(&action.text())? },
            "get" => VaultRequest::Get { name: name_of(action)? },
            "list" => list_page(action)?,
            "delete" => VaultRequest::Delete { name: name_of(action)?, if_version: version_of(action)? },
            _ => return Err(malformed("unknown vault action")),
        })
    }

    pub fn to_element(&self) -> Element {
        let action = match self {
            VaultRequest::Put { name, if_version, data } => Element::builder("put", NS)
                .attr(n("name"), name.as_str())
                .attr(n("if-version"), if_version.to_string())
                .append(b64_encode(data)),
            VaultRequest::Get { name } => Element::builder("get", NS).attr(n("name"), name.as_str()),
            VaultRequest::List { max, cursor } => {
                let list = Element::builder("list", NS);
                match (max, cursor) {
                    (None, Cursor::First) => list,
                    _ => list.append(rsm_request(*max, cursor)),
                }
            }
            VaultRequest::Delete { name, if_version } => Element::builder("delete", NS)
                .attr(n("name"), name.as_str())
                .attr(n("if-version"), if_version.to_string()),
        };
        Element::builder("vault", NS).append(action.build()).build()
    }
}

/// `<list/>` with an optional RSM `<set/>`, whose cursors are blob names.
fn list_page(list: &Element) -> Result<VaultRequest, ProtocolError> {
    let Some(set) = list.get_child("set", NS_RSM) else {
        return Ok(VaultRequest::List { max: None, cursor: Cursor::First });
    };
    let (max, cursor) = parse_rsm(set)?;
    if let Cursor::After(name) | Cursor::Before(name) = &cursor {
        if !valid_name(name) {
            return Err(malformed("an RSM cursor of a vault listing is a blob name"));
        }
    }
    Ok(VaultRequest::List { max, cursor })
}

/// A blob as the service describes it; `data` only in `get` results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultItem {
    pub name: String,
    pub version: u64,
    pub size: usize,
    pub data: Option<Vec<u8>>,
}

impl VaultItem {
    pub fn to_element(&self) -> Element {
        let mut b = Element::builder("item", NS)
            .attr(n("name"), self.name.as_str())
            .attr(n("version"), self.version.to_string())
            .attr(n("size"), self.size.to_string());
        if let Some(d) = &self.data {
            b = b.append(b64_encode(d));
        }
        b.build()
    }

    pub fn parse(el: &Element) -> Result<Self, ProtocolError> {
        let text = el.text();
        Ok(VaultItem {
            name: name_of(el)?,
            version: attr(el, "version", "item without version")?.parse().map_err(|_| malformed("version"))?,
            size: attr(el, "size", "item without size")?.parse().map_err(|_| malformed("size"))?,
            data: (!text.trim().is_empty()).then(|| b64_decode(&text)).transpose()?,
        })
    }
}

/// `<vault><item/>…<quota used max/></vault>`: a result.
pub fn vault_result(items: &[VaultItem], quota: Option<(usize, usize)>) -> Element {
    let mut b = Element::builder("vault", NS).append_all(items.iter().map(VaultItem::to_element));
    if let Some((used, max)) = quota {
        b = b.append(
            Element::builder("quota", NS).attr(n("used"), used.to_string()).attr(n("max"), max.to_string()).build(),
        );
    }
    b.build()
}

/// A `<list/>` result: the page's items, the quota, and the RSM `<set/>`
/// with the index of the page's first blob among all `count` blobs.
pub fn list_result(items: &[VaultItem], quota: (usize, usize), first_index: usize, count: usize) -> Element {
    let mut el = vault_result(items, Some(quota));
    let first = items.first().map(|i| (i.name.as_str(), first_index));
    el.append_child(rsm_result(first, items.last().map(|i| i.name.as_str()), count));
    el
}

/// (first index, count) of a `<list/>` result; None for other results.
pub fn parse_list_page(el: &Element) -> Option<(usize, usize)> {
    el.get_child("set", NS_RSM).map(parse_rsm_result)
}

pub fn parse_vault_result(el: &Element) -> Result<(Vec<VaultItem>, Option<(usize, usize)>), ProtocolError> {
    if !el.is("vault", NS) {
        return Err(malformed("expected <vault/>"));
    }
    let items = el.children().filter(|c| c.name() == "item").map(VaultItem::parse).collect::<Result<_, _>>()?;
    let quota = el.get_child("quota", NS).and_then(|q| Some((q.attr("used")?.parse().ok()?, q.attr("max")?.parse().ok()?)));
    Ok((items, quota))
}

/// `<version-mismatch current/>`, with `conflict`: a compare-and-swap lost.
pub fn version_mismatch(current: u64) -> Element {
    Element::builder("version-mismatch", NS_ERRORS).attr(n("current"), current.to_string()).build()
}

pub fn parse_version_mismatch(el: &Element) -> Option<u64> {
    el.is("version-mismatch", NS_ERRORS).then(|| el.attr("current")?.parse().ok()).flatten()
}

/// Where an account's vault lives (xep/ §Where the Vault Lives): the item
/// "current" of this private PEP node of the account names a JID, an MLS
/// service (the vault is at the account's directory there) or the
/// account's own bare JID (the vault is in its PEP nodes).
pub const LOCATION_NODE: &str = "urn:xmpp:mls:0:vault-location";
pub const LOCATION_ITEM: &str = "current";
/// Prefix of the PEP nodes holding a vault's blobs.
pub const PEP_NODE: &str = "urn:xmpp:mls:0:vault";
/// Prefix of the PEP nodes holding the key record, one node per version.
pub const PEP_KEYS_NODE: &str = "urn:xmpp:mls:0:vault-keys";
/// Largest blob in PEP: a server advertises no item limit, and its publish
/// (a third larger in base64) stays far below every default c2s limit.
pub const PEP_MAX_BLOB: usize = 64 * 1024;

const NS_DATA: &str = "jabber:x:data";

/// `<vault-location xmlns='urn:xmpp:mls:0' jid/>`.
pub fn location_element(jid: &Jid) -> Element {
    Element::builder("vault-location", NS).attr(n("jid"), jid.as_str()).build()
}

pub fn parse_location(el: &Element) -> Result<Jid, ProtocolError> {
    if !el.is("vault-location", NS) {
        return Err(malformed("expected <vault-location/>"));
    }
    Jid::new(attr(el, "jid", "vault-location without jid")?).map_err(|_| malformed("vault-location jid"))
}

/// The PEP node of blob `name`: [`PEP_NODE`], "/" and the name's first
/// two segments (all of it if it has fewer); the item ID is the name.
pub fn pep_node(name: &str) -> String {
    let head: Vec<&str> = name.splitn(3, '/').take(2).collect();
    format!("{PEP_NODE}/{}", head.join("/"))
}

/// The node of version `version` of the key record.
pub fn pep_keys_node(version: u64) -> String {
    format!("{PEP_KEYS_NODE}/{version}")
}

/// What every vault node is (XEP-0223): private to the account, persistent.
const PRIVATE: [(&str, &str); 2] = [("pubsub#persist_items", "true"), ("pubsub#access_model", "whitelist")];

/// A submitted data form of `form_type` with `fields`.
fn submit_form(form_type: &str, fields: &[(&str, &str)]) -> Element {
    let field = |var: &str, value: &str, hidden: bool| {
        let mut b = Element::builder("field", NS_DATA).attr(n("var"), var);
        if hidden {
            b = b.attr(n("type"), "hidden");
        }
        b.append(Element::builder("value", NS_DATA).append(value).build()).build()
    };
    Element::builder("x", NS_DATA)
        .attr(n("type"), "submit")
        .append(field("FORM_TYPE", form_type, true))
        .append_all(fields.iter().map(|(var, value)| field(var, value, false)))
        .build()
}

/// Publishes `payload` as item `id` of the account's private node `node`,
/// with publish-options as preconditions: a node that exists with other
/// options (say, readable by contacts) is refused, not published to.
pub fn private_publish(node: &str, id: &str, payload: Element) -> Element {
    let mut pubsub = super::pubsub::publish_request(node, vec![(Some(id.to_owned()), payload)]);
    let options = Element::builder("publish-options", super::pubsub::NS_PUBSUB)
        .append(submit_form("http://jabber.org/protocol/pubsub#publish-options", &PRIVATE))
        .build();
    pubsub.append_child(options);
    pubsub
}

/// Creates the private node `node`, keeping as many items as the server
/// allows (a node that a publish creates keeps one); refused with
/// `<conflict/>` if it exists, which makes it a claim too (xep/ §The Key
/// Record in PEP).
pub fn create_private_node(node: &str) -> Element {
    let create = Element::builder("create", super::pubsub::NS_PUBSUB).attr(n("node"), node).build();
    let fields = [PRIVATE[0], PRIVATE[1], ("pubsub#max_items", "max")];
    let configure = Element::builder("configure", super::pubsub::NS_PUBSUB)
        .append(submit_form("http://jabber.org/protocol/pubsub#node_config", &fields))
        .build();
    Element::builder("pubsub", super::pubsub::NS_PUBSUB).append(create).append(configure).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_names_are_checked() {
        for r in [
            VaultRequest::Put { name: "device/state.0".into(), if_version: 3, data: vec![1, 2] },
            VaultRequest::Get { name: "keys".into() },
            VaultRequest::List { max: None, cursor: Cursor::First },
            VaultRequest::List { max: Some(2), cursor: Cursor::After("keys".into()) },
            VaultRequest::List { max: None, cursor: Cursor::Last },
            VaultRequest::Delete { name: "keys".into(), if_version: 1 },
        ] {
            assert_eq!(VaultRequest::parse(&r.to_element()).unwrap(), r);
        }
        assert!(!valid_name("a b"));
        assert!(!valid_name(""));
        let item = VaultItem { name: "x".into(), version: 2, size: 3, data: Some(vec![1, 2, 3]) };
        let (items, quota) = parse_vault_result(&vault_result(&[item.clone()], Some((3, 10)))).unwrap();
        assert_eq!((items, quota), (vec![item], Some((3, 10))));
        assert_eq!(parse_version_mismatch(&version_mismatch(4)), Some(4));
        let bad = VaultRequest::List { max: None, cursor: Cursor::After("a b".into()) };
        assert!(VaultRequest::parse(&bad.to_element()).is_err());
    }

    #[test]
    fn pep_nodes_follow_the_first_two_segments() {
        assert_eq!(pep_node("keys"), "urn:xmpp:mls:0:vault/keys");
        assert_eq!(pep_node("device/91ab/manifest"), "urn:xmpp:mls:0:vault/device/91ab");
        assert_eq!(pep_node("sent/g/3/91ab/0"), "urn:xmpp:mls:0:vault/sent/g");
        assert_eq!(pep_keys_node(12), "urn:xmpp:mls:0:vault-keys/12");
        let jid = Jid::new("mls.example.org").unwrap();
        assert_eq!(parse_location(&location_element(&jid)).unwrap(), jid);
    }

    #[test]
    fn a_listing_item_with_the_longest_fields_fits_the_bound() {
        let item = VaultItem { name: "n".repeat(MAX_NAME), version: u64::MAX, size: usize::MAX, data: None };
        let size = |n: usize| {
            let mut out = Vec::new();
            list_result(&vec![item.clone(); n], (0, 0), 0, n).write_to(&mut out).unwrap();
            out.len()
        };
        assert!(size(2) - size(1) <= MAX_LIST_ITEM, "{}", size(2) - size(1));
        let page = list_result(std::slice::from_ref(&item), (5, 10), 3, 7);
        assert_eq!(parse_list_page(&page), Some((3, 7)));
        assert_eq!(parse_vault_result(&page).unwrap(), (vec![item], Some((5, 10))));
    }
}
