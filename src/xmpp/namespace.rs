//! Stanza namespace mapping between a component stream and `jabber:client`.
//!
//! Code above the stream works with `jabber:client` stanzas (what
//! xmpp-parsers and every XEP example use). On a component stream the stanza
//! namespace is `jabber:component:accept`, and Prosody silently drops a
//! top-level stanza in `jabber:client`. The rename stops at the first element
//! in another namespace, so `<forwarded><message xmlns='jabber:client'/>`
//! inside a MAM result is left as it is.

use minidom::{Element, Node};

pub const CLIENT: &str = "jabber:client";
pub const COMPONENT: &str = "jabber:component:accept";

/// Moves `el` and its same-namespace descendants from namespace `from` to `to`.
pub fn rename(mut el: Element, from: &str, to: &str) -> Element {
    if el.ns() != from {
        return el;
    }
    let mut out = Element::bare(el.name(), to);
    *out.attrs_mut() = el.attrs().clone();
    for node in el.take_nodes() {
        match node {
            Node::Element(child) => {
                out.append_child(rename(child, from, to));
            }
            Node::Text(text) => out.append_text_node(text),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_down_to_foreign_namespace_only() {
        let xml = "<message xmlns='jabber:component:accept' to='a@b' id='1'><body>hi</body>\
            <result xmlns='urn:xmpp:mam:2'><forwarded xmlns='urn:xmpp:forward:0'>\
            <message xmlns='jabber:component:accept'><body>inner</body></message></forwarded></result></message>";
        let el: Element = xml.parse().unwrap();
        let out = rename(el, COMPONENT, CLIENT);
        assert_eq!(out.ns(), CLIENT);
        assert_eq!(out.attr("to"), Some("a@b"));
        assert_eq!(out.get_child("body", CLIENT).unwrap().text(), "hi");
        let inner = out
            .get_child("result", "urn:xmpp:mam:2").unwrap()
            .get_child("forwarded", "urn:xmpp:forward:0").unwrap()
            .get_child("message", COMPONENT);
        assert!(inner.is_some(), "nested stanza must keep its namespace");
    }

    #[test]
    fn round_trip_is_identity() {
        let xml = "<iq xmlns='jabber:client' type='get' id='x'><query xmlns='q'/></iq>";
        let el: Element = xml.parse().unwrap();
        let back = rename(rename(el.clone(), CLIENT, COMPONENT), COMPONENT, CLIENT);
        assert_eq!(back, el);
    }
}
