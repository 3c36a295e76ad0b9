//! Groups at the Delivery Service (xep/ §Groups): creation, commit bundles,
//! proposals, GroupInfo, application messages, the live feed and Welcomes.

use minidom::Element;

use super::{attr, b64_decode, b64_encode, known_children, malformed, n, ProtocolError, NS, NS_ERRORS};

/// `<create><group-info/></create>`: a new group from its creator's GroupInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    pub group_info: Vec<u8>,
}

/// `<commit epoch-check><message/>[<welcome/>]<group-info/></commit>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitBundle {
    /// MLSMessage: a PublicMessage carrying the Commit (empty when parsed
    /// from a bundle that names it by `parts`).
    pub commit: Vec<u8>,
    /// Set when the Commit was uploaded in parts: the `<message/>` names
    /// it instead of carrying it (xep/ §Commits in Parts).
    pub parts: Option<Parts>,
    /// MLSMessage: the Welcome for added members, if any.
    pub welcome: Option<Vec<u8>>,
    /// MLSMessage: the GroupInfo of the new epoch, with the ratchet tree.
    pub group_info: Vec<u8>,
    /// The committer's [epoch check](epoch_check) of the new epoch.
    pub epoch_check: String,
}

/// `<proposal><message/></proposal>`: a PublicMessage carrying a Proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub message: Vec<u8>,
}

/// The octets of the one child `name`, if any; a second one does not
/// conform (a bundle has one Welcome for all joiners, never one each).
fn child_bytes(el: &Element, name: &str, why: &'static str) -> Result<Option<Vec<u8>>, ProtocolError> {
    let mut children = el.children().filter(|c| c.is(name, NS));
    let Some(child) = children.next() else { return Ok(None) };
    if children.next().is_some() {
        return Err(malformed("an element of urn:xmpp:mls:0 given twice"));
    }
    known_children(child, &[])?;
    b64_decode(&child.text()).map(Some).map_err(|_| malformed(why))
}

fn required(bytes: Option<Vec<u8>>, why: &'static str) -> Result<Vec<u8>, ProtocolError> {
    bytes.ok_or(malformed(why))
}

fn bytes_child(name: &str, bytes: &[u8]) -> Element {
    Element::builder(name, NS).append(b64_encode(bytes)).build()
}

impl Create {
    pub fn parse(el: &Element) -> Result<Self, ProtocolError> {
        known_children(el, &["group-info"])?;
        let gi = child_bytes(el, "group-info", "invalid base64 in <group-info/>")?;
        Ok(Create { group_info: required(gi, "create without <group-info/>")? })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("create", NS).append(bytes_child("group-info", &self.group_info)).build()
    }
}

impl CommitBundle {
    pub fn parse(el: &Element) -> Result<Self, ProtocolError> {
        known_children(el, &["message", "welcome", "group-info"])?;
        let parts = el.get_child("message", NS).map(Parts::named_by).transpose()?.flatten();
        let commit = match parts {
            Some(_) => Vec::new(),
            None => required(child_bytes(el, "message", "invalid base64 in <message/>")?, "commit without <message/>")?,
        };
        Ok(CommitBundle {
            commit,
            parts,
            welcome: child_bytes(el, "welcome", "invalid base64 in <welcome/>")?,
            group_info: required(
                child_bytes(el, "group-info", "invalid base64 in <group-info/>")?,
                "commit without <group-info/>",
            )?,
            epoch_check: valid_epoch_check(attr(el, "epoch-check", "commit without epoch-check")?)?,
        })
    }

    pub fn to_element(&self) -> Element {
        let message = match &self.parts {
            Some(parts) => parts.name(Element::builder("message", NS)).build(),
            None => bytes_child("message", &self.commit),
        };
        let mut b = Element::builder("commit", NS).attr(n("epoch-check"), self.epoch_check.as_str()).append(message);
        if let Some(w) = &self.welcome {
            b = b.append(bytes_child("welcome", w));
        }
        b.append(bytes_child("group-info", &self.group_info)).build()
    }
}

impl Proposal {
    pub fn parse(el: &Element) -> Result<Self, ProtocolError> {
        known_children(el, &["message"])?;
        let m = child_bytes(el, "message", "invalid base64 in <message/>")?;
        Ok(Proposal { message: required(m, "proposal without <message/>")? })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("proposal", NS).append(bytes_child("message", &self.message)).build()
    }
}

/// Length of an epoch check in bytes (hex on the wire).
pub const EPOCH_CHECK_LEN: usize = 16;

/// The value members compare after each commit to detect a fork: the
/// first 16 bytes of SHA-256("xmpp-mls epoch check" || epoch_authenticator),
/// in lowercase hex. Hashing keeps the epoch authenticator itself private.
pub fn epoch_check(epoch_authenticator: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"xmpp-mls epoch check");
    h.update(epoch_authenticator);
    data_encoding::HEXLOWER.encode(&h.finalize()[..EPOCH_CHECK_LEN])
}

fn valid_epoch_check(s: &str) -> Result<String, ProtocolError> {
    let ok = s.len() == 2 * EPOCH_CHECK_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| s.to_owned()).ok_or(malformed("epoch-check is 32 lowercase hex digits"))
}

/// `<accepted epoch stanza-id position/>`: a commit or proposal took its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The group's epoch after this message.
    pub epoch: u64,
    pub stanza_id: String,
    /// Its position in the group's archive (xep/ §Delivery to the Feed).
    pub position: u64,
}

impl Accepted {
    pub fn to_element(&self) -> Element {
        Element::builder("accepted", NS)
            .attr(n("epoch"), self.epoch.to_string())
            .attr(n("stanza-id"), self.stanza_id.as_str())
            .attr(n("position"), self.position.to_string())
            .build()
    }

    pub fn parse(el: &Element) -> Result<Self, ProtocolError> {
        if !el.is("accepted", NS) {
            return Err(malformed("expected <accepted/>"));
        }
        Ok(Accepted {
            epoch: parse_u64(attr(el, "epoch", "accepted without epoch")?)?,
            stanza_id: attr(el, "stanza-id", "accepted without stanza-id")?.to_owned(),
            position: parse_u64(attr(el, "position", "accepted without position")?)?,
        })
    }
}

fn parse_u64(s: &str) -> Result<u64, ProtocolError> {
    s.parse().map_err(|_| malformed("epochs and positions are decimal numbers"))
}

/// The application condition of a commit that lost its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrongEpoch {
    pub epoch: u64,
    /// Stanza id of the commit that started the current epoch (absent at epoch 0).
    pub commit: Option<String>,
}

impl WrongEpoch {
    pub fn to_element(&self) -> Element {
        let mut b = Element::builder("wrong-epoch", NS_ERRORS).attr(n("epoch"), self.epoch.to_string());
        if let Some(c) = &self.commit {
            b = b.attr(n("commit"), c.as_str());
        }
        b.build()
    }

    pub fn parse(el: &Element) -> Option<Self> {
        if !el.is("wrong-epoch", NS_ERRORS) {
            return None;
        }
        Some(WrongEpoch { epoch: el.attr("epoch")?.parse().ok()?, commit: el.attr("commit").map(str::to_owned) })
    }
}

/// `<group-info epoch>`: the latest GroupInfo (with the ratchet tree), for
/// external commits and recovery.
pub fn group_info_element(epoch: u64, group_info: &[u8]) -> Element {
    Element::builder("group-info", NS).attr(n("epoch"), epoch.to_string()).append(b64_encode(group_info)).build()
}

pub fn parse_group_info(el: &Element) -> Result<(u64, Vec<u8>), ProtocolError> {
    if !el.is("group-info", NS) {
        return Err(malformed("expected <group-info/>"));
    }
    Ok((parse_u64(attr(el, "epoch", "group-info without epoch")?)?, b64_decode(&el.text())?))
}

/// `<tree epoch page/>`: a request for one page of the ratchet tree of one
/// epoch of the group (xep/ §Fetching the Ratchet Tree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeRequest {
    pub epoch: u64,
    pub page: u64,
}

/// `<tree epoch page pages>`: one page of a ratchet tree, the TLS
/// encodings of consecutive nodes (`optional<Node>`); the pages in order,
/// concatenated, are the content of the `ratchet_tree` vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreePage {
    pub epoch: u64,
    pub page: u64,
    pub pages: u64,
    pub nodes: Vec<u8>,
}

impl TreeRequest {
    pub fn parse(el: &Element) -> Result<Self, ProtocolError> {
        known_children(el, &[])?;
        let page = el.attr("page").map(parse_u64).transpose()?.unwrap_or(0);
        Ok(TreeRequest { epoch: parse_u64(attr(el, "epoch", "tree without epoch")?)?, page })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("tree", NS).attr(n("epoch"), self.epoch.to_string()).attr(n("page"), self.page.to_string()).build()
    }
}

impl TreePage {
    pub fn parse(el: &Element) -> Result<Self, ProtocolError> {
        if !el.is("tree", NS) {
            return Err(malformed("expected <tree/>"));
        }
        let number = |name, why| attr(el, name, why).and_then(parse_u64);
        let page = TreePage {
            epoch: number("epoch", "tree without epoch")?,
            page: number("page", "tree without page")?,
            pages: number("pages", "tree without pages")?,
            nodes: b64_decode(&el.text())?,
        };
        (page.page < page.pages).then_some(page).ok_or(malformed("a tree page beyond its pages"))
    }

    pub fn to_element(&self) -> Element {
        Element::builder("tree", NS)
            .attr(n("epoch"), self.epoch.to_string())
            .attr(n("page"), self.page.to_string())
            .attr(n("pages"), self.pages.to_string())
            .append(b64_encode(&self.nodes))
            .build()
    }
}

/// Octets of the XML around the base64 of a page (of a tree or a Commit in
/// parts), its attributes and the IQ around it included.
const PAGE_OVERHEAD: usize = 256;

/// The octets one page carries when payloads are at most `max_payload_size`:
/// the base64 of a page fits with room for its element.
pub fn page_octets(max_payload_size: usize) -> usize {
    max_payload_size.saturating_sub(PAGE_OVERHEAD) / 4 * 3
}

/// `sha256='…' size='…'`: an MLSMessage named by the SHA-256 of its
/// octets and their number, where it is too large to carry (xep/ §Commits
/// in Parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    pub sha256: [u8; 32],
    pub size: u64,
}

impl Parts {
    pub fn of(message: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        Parts { sha256: Sha256::digest(message).into(), size: message.len() as u64 }
    }

    /// Whether `message` is the one named.
    pub fn names(&self, message: &[u8]) -> bool {
        *self == Parts::of(message)
    }

    /// The name on `el`, if it has one: then it carries no octets itself.
    fn named_by(el: &Element) -> Result<Option<Self>, ProtocolError> {
        if el.attr("sha256").is_none() {
            return Ok(None);
        }
        if !el.text().trim().is_empty() {
            return Err(malformed("a message named by sha256 carries no octets"));
        }
        Self::parse(el).map(Some)
    }

    fn parse(el: &Element) -> Result<Self, ProtocolError> {
        let hex = attr(el, "sha256", "a part without sha256")?;
        let sha256 = data_encoding::HEXLOWER
            .decode(hex.as_bytes())
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .ok_or(malformed("sha256 is 64 lowercase hex digits"))?;
        Ok(Parts { sha256, size: parse_u64(attr(el, "size", "sha256 without size")?)? })
    }

    fn name(&self, b: minidom::element::ElementBuilder) -> minidom::element::ElementBuilder {
        b.attr(n("sha256"), data_encoding::HEXLOWER.encode(&self.sha256)).attr(n("size"), self.size.to_string())
    }
}

/// `<part sha256 size offset>`: the octets of a Commit from `offset` on,
/// uploaded to the group JID before the bundle that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartUpload {
    pub parts: Parts,
    pub offset: u64,
    pub octets: Vec<u8>,
}

impl PartUpload {
    pub fn parse(el: &Element) -> Result<Self, ProtocolError> {
        known_children(el, &[])?;
        let parts = Parts::parse(el)?;
        let upload = PartUpload {
            parts,
            offset: parse_u64(attr(el, "offset", "a part without offset")?)?,
            octets: b64_decode(&el.text())?,
        };
        let end = upload.offset.checked_add(upload.octets.len() as u64);
        match end.is_some_and(|e| e <= parts.size) && !upload.octets.is_empty() {
            true => Ok(upload),
            false => Err(malformed("a part is not empty and ends within size")),
        }
    }

    pub fn to_element(&self) -> Element {
        self.parts
            .name(Element::builder("part", NS))
            .attr(n("offset"), self.offset.to_string())
            .append(b64_encode(&self.octets))
            .build()
    }
}

/// `<part position offset/>`: a request for the octets of the archived
/// message at `position` from `offset` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartRequest {
    pub position: u64,
    pub offset: u64,
}

/// `<part position offset size>`: one page of an archived message, at most
/// a page's octets from `offset`; `size` is the whole message's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub position: u64,
    pub offset: u64,
    pub size: u64,
    pub octets: Vec<u8>,
}

impl PartRequest {
    pub fn parse(el: &Element) -> Result<Self, ProtocolError> {
        known_children(el, &[])?;
        Ok(PartRequest {
            position: parse_u64(attr(el, "position", "a part request without position")?)?,
            offset: el.attr("offset").map(parse_u64).transpose()?.unwrap_or(0),
        })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("part", NS)
            .attr(n("position"), self.position.to_string())
            .attr(n("offset"), self.offset.to_string())
            .build()
    }
}

impl Part {
    pub fn parse(el: &Element) -> Result<Self, ProtocolError> {
        if !el.is("part", NS) {
            return Err(malformed("expected <part/>"));
        }
        let number = |name, why| attr(el, name, why).and_then(parse_u64);
        Ok(Part {
            position: number("position", "part without position")?,
            offset: number("offset", "part without offset")?,
            size: number("size", "part without size")?,
            octets: b64_decode(&el.text())?,
        })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("part", NS)
            .attr(n("position"), self.position.to_string())
            .attr(n("offset"), self.offset.to_string())
            .attr(n("size"), self.size.to_string())
            .append(b64_encode(&self.octets))
            .build()
    }
}

/// What a group message carries, as the DS classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Commit,
    Proposal,
    Application,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Commit => "commit",
            Kind::Proposal => "proposal",
            Kind::Application => "application",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        [Kind::Commit, Kind::Proposal, Kind::Application].into_iter().find(|k| k.name() == s)
    }
}

/// `<mls>`: an MLSMessage in a group message. Sent by members without
/// attributes; the DS adds `kind`, `epoch` and, on commits, `epoch-check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMessage {
    /// The MLSMessage; empty when `parts` names it instead.
    pub message: Vec<u8>,
    /// Set on a Commit too large for one stanza: members fetch it in parts
    /// by its position (xep/ §Commits in Parts).
    pub parts: Option<Parts>,
    pub kind: Option<Kind>,
    /// The epoch the message belongs to (a commit's is the epoch it ends).
    pub epoch: Option<u64>,
    pub epoch_check: Option<String>,
    /// Its position in the group's archive: 1, 2, 3... with no gap.
    pub position: Option<u64>,
}

impl GroupMessage {
    /// The element's name, in [`NS`].
    pub const NAME: &'static str = "mls";

    pub fn new(message: Vec<u8>) -> Self {
        GroupMessage { message, parts: None, kind: None, epoch: None, epoch_check: None, position: None }
    }

    /// Finds the `<mls/>` child of a message stanza.
    pub fn find(stanza: &Element) -> Option<Result<Self, ProtocolError>> {
        stanza.get_child(Self::NAME, NS).map(Self::parse)
    }

    pub fn parse(el: &Element) -> Result<Self, ProtocolError> {
        known_children(el, &[])?;
        let kind = el.attr("kind").map(|k| Kind::from_name(k).ok_or(malformed("unknown kind"))).transpose()?;
        let parts = Parts::named_by(el)?;
        Ok(GroupMessage {
            message: if parts.is_some() { Vec::new() } else { b64_decode(&el.text())? },
            parts,
            kind,
            epoch: el.attr("epoch").map(parse_u64).transpose()?,
            epoch_check: el.attr("epoch-check").map(valid_epoch_check).transpose()?,
            position: el.attr("position").map(parse_u64).transpose()?,
        })
    }

    pub fn to_element(&self) -> Element {
        let mut b = Element::builder("mls", NS);
        if let Some(k) = self.kind {
            b = b.attr(n("kind"), k.name());
        }
        if let Some(e) = self.epoch {
            b = b.attr(n("epoch"), e.to_string());
        }
        if let Some(c) = &self.epoch_check {
            b = b.attr(n("epoch-check"), c.as_str());
        }
        if let Some(p) = self.position {
            b = b.attr(n("position"), p.to_string());
        }
        match &self.parts {
            Some(parts) => parts.name(b).build(),
            None => b.append(b64_encode(&self.message)).build(),
        }
    }
}

/// `<welcome group commit>`: a Welcome for the account, from its inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The group JID.
    pub group: String,
    /// Stanza id of the commit that added the account: where the joiner's
    /// part of the archive starts (it catches up after it).
    pub commit: Option<String>,
    /// That commit's position in the group's archive.
    pub position: Option<u64>,
    pub message: Vec<u8>,
}

impl Welcome {
    pub fn to_element(&self) -> Element {
        let mut b = Element::builder("welcome", NS).attr(n("group"), self.group.as_str());
        if let Some(c) = &self.commit {
            b = b.attr(n("commit"), c.as_str());
        }
        if let Some(p) = self.position {
            b = b.attr(n("position"), p.to_string());
        }
        b.append(b64_encode(&self.message)).build()
    }

    pub fn find(stanza: &Element) -> Option<Result<Self, ProtocolError>> {
        let el = stanza.get_child("welcome", NS)?;
        Some((|| {
            Ok(Welcome {
                group: attr(el, "group", "welcome without group")?.to_owned(),
                commit: el.attr("commit").map(str::to_owned),
                position: el.attr("position").map(parse_u64).transpose()?,
                message: b64_decode(&el.text())?,
            })
        })())
    }
}

/// `<x xmlns='urn:xmpp:mls:0' epoch/>` in the DS's presence to a device
/// that joined the live feed.
pub fn joined_element(epoch: u64) -> Element {
    Element::builder("x", NS).attr(n("epoch"), epoch.to_string()).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let check = epoch_check(b"authenticator");
        assert_eq!(check.len(), 32);
        let bundle = CommitBundle { commit: vec![1], parts: None, welcome: Some(vec![2]), group_info: vec![3], epoch_check: check.clone() };
        assert_eq!(CommitBundle::parse(&bundle.to_element()).unwrap(), bundle);
        let create = Create { group_info: vec![9] };
        assert_eq!(Create::parse(&create.to_element()).unwrap(), create);
        let m = GroupMessage { message: vec![4], parts: None, kind: Some(Kind::Commit), epoch: Some(7), epoch_check: Some(check), position: Some(12) };
        assert_eq!(GroupMessage::parse(&m.to_element()).unwrap(), m);
        let we = WrongEpoch { epoch: 3, commit: Some("abc".into()) };
        assert_eq!(WrongEpoch::parse(&we.to_element()), Some(we));
        let a = Accepted { epoch: 2, stanza_id: "x".into(), position: 5 };
        assert_eq!(Accepted::parse(&a.to_element()).unwrap(), a);
        assert!(CommitBundle::parse(&"<commit xmlns='urn:xmpp:mls:0' epoch-check='zz'/>".parse().unwrap()).is_err());
    }

    #[test]
    fn a_bundle_with_two_welcomes_does_not_conform() {
        let mut el = CommitBundle { commit: vec![1], parts: None, welcome: Some(vec![2]), group_info: vec![3], epoch_check: epoch_check(b"a") }.to_element();
        el.append_child(bytes_child("welcome", &[4]));
        assert_eq!(CommitBundle::parse(&el), Err(malformed("an element of urn:xmpp:mls:0 given twice")));
    }
}
