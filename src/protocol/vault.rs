//! The vault (xep/ §Vault): named, versioned, opaque blobs at an account's
//! directory JID, owner only, written with compare-and-swap.

use minidom::Element;

use super::{attr, b64_decode, b64_encode, known_children, malformed, n, ProtocolError, NS, NS_ERRORS};

pub const MAX_NAME: usize = 128;

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
    List,
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
            "list" => VaultRequest::List,
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
            VaultRequest::List => Element::builder("list", NS),
            VaultRequest::Delete { name, if_version } => Element::builder("delete", NS)
                .attr(n("name"), name.as_str())
                .attr(n("if-version"), if_version.to_string()),
        };
        Element::builder("vault", NS).append(action.build()).build()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_names_are_checked() {
        for r in [
            VaultRequest::Put { name: "device/state.0".into(), if_version: 3, data: vec![1, 2] },
            VaultRequest::Get { name: "keys".into() },
            VaultRequest::List,
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
    }
}
