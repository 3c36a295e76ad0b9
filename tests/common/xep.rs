//! The ProtoXEPs' examples as test fixtures.

use minidom::Element;

/// The documents of xep/, by path, in the order in which their examples are
/// replayed: each one's examples build on the state of those before.
pub const XEPS: &[(&str, &str)] = &[
    ("xep/xep-mls-devices.xml", include_str!("../../xep/xep-mls-devices.xml")),
    ("xep/xep-mls-delivery.xml", include_str!("../../xep/xep-mls-delivery.xml")),
    ("xep/xep-mls-history.xml", include_str!("../../xep/xep-mls-history.xml")),
    ("xep/xep-mls-vault.xml", include_str!("../../xep/xep-mls-vault.xml")),
];

pub struct Example {
    pub caption: String,
    /// The stanzas of the example, parsed in namespace `jabber:client`.
    pub stanzas: Vec<Element>,
}

/// Every `<example>` of the XEPs, in the order of [`XEPS`] and then of
/// each document.
pub fn examples() -> Vec<Example> {
    XEPS.iter().flat_map(|(_, text)| examples_of(text)).collect()
}

fn examples_of(xep: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut rest = xep;
    while let Some(start) = rest.find("<example") {
        rest = &rest[start..];
        let head_end = rest.find('>').expect("example start tag ends");
        let caption = caption_of(&rest[..head_end]);
        let body_start = rest.find("<![CDATA[").expect("example has CDATA") + 9;
        let body_end = rest.find("]]>").expect("CDATA ends");
        let body = &rest[body_start..body_end];
        let wrapped = format!("<root xmlns='jabber:client'>{body}</root>");
        let root: Element = wrapped
            .parse()
            .unwrap_or_else(|e| panic!("example {caption:?} is not well-formed: {e}"));
        out.push(Example { caption, stanzas: root.children().map(|c| super::strip_whitespace(c.clone())).collect() });
        rest = &rest[body_end..];
    }
    out
}

fn caption_of(tag: &str) -> String {
    let i = tag.find("caption=").expect("example has a caption") + 8;
    let quote = &tag[i..i + 1];
    let end = tag[i + 1..].find(quote).unwrap();
    tag[i + 1..i + 1 + end].to_owned()
}

/// Pairs each request (IQ get/set) with the reply that has the same id.
pub fn request_reply_pairs() -> Vec<(Element, Element)> {
    let stanzas: Vec<Element> = examples().into_iter().flat_map(|e| e.stanzas).collect();
    stanzas
        .iter()
        .filter(|s| s.name() == "iq" && matches!(s.attr("type"), Some("get") | Some("set")))
        .filter_map(|req| {
            let reply = stanzas.iter().find(|s| {
                s.attr("id") == req.attr("id") && matches!(s.attr("type"), Some("result") | Some("error"))
            })?;
            Some((req.clone(), reply.clone()))
        })
        .collect()
}

/// The stanza whose id is `id`.
pub fn stanza_with_id(id: &str) -> Element {
    examples()
        .into_iter()
        .flat_map(|e| e.stanzas)
        .find(|s| s.attr("id") == Some(id))
        .unwrap_or_else(|| panic!("no example stanza with id {id}"))
}

/// The reply (result or error) whose id is `id`.
pub fn reply_with_id(id: &str) -> Element {
    examples()
        .into_iter()
        .flat_map(|e| e.stanzas)
        .find(|s| s.attr("id") == Some(id) && matches!(s.attr("type"), Some("result") | Some("error")))
        .unwrap_or_else(|| panic!("no example reply with id {id}"))
}
