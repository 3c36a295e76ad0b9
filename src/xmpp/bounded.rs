//! Stanzas read with bounded nesting.
//!
//! tokio-xmpp builds every received element with xso's minidom builder,
//! which hands each XML event down one stack frame per level of nesting
//! (quadratic work, linear stack), and whatever walks a minidom element
//! afterwards (clone, serialise, drop) recurses too. A stanza nested a few
//! thousand levels deep, far below any stanza size limit, overflowed the
//! stack and aborted the component. [`Bounded`] is built with an explicit
//! stack and nothing deeper than [`MAX_DEPTH`]: a stanza that nests deeper
//! arrives without its children, so it is refused like any stanza without
//! a payload (an IQ with `bad-request`, xep/ §Error Handling).

use minidom::rxml::{AttrMap, Event, QName};
use minidom::Element;
use xso::error::{Error, FromEventsError};
use xso::{Context, FromEventsBuilder, FromXml};

/// The deepest element built, the stanza being at depth 1. Real stanzas
/// stay below 10 (a MAM result carrying a device-list event: 8).
pub const MAX_DEPTH: usize = 64;

/// A stanza read from a stream, nested at most [`MAX_DEPTH`] deep.
#[derive(Debug)]
pub struct Bounded(pub Element);

/// Builds a [`Bounded`] without recursion.
pub struct BoundedBuilder {
    /// The open elements, the stanza first.
    open: Vec<Element>,
    /// Levels of a too deep subtree still open (0: none).
    skipping: usize,
    too_deep: bool,
}

fn element(qname: QName, attrs: AttrMap) -> Element {
    let mut builder = Element::builder(qname.1, qname.0);
    for ((ns, name), value) in attrs.into_iter() {
        builder = builder.attr_ns(ns, name, value);
    }
    builder.build()
}

impl BoundedBuilder {
    fn finish(&self, mut stanza: Element) -> Bounded {
        if self.too_deep {
            tracing::warn!(stanza = stanza.name(), max = MAX_DEPTH, "element nesting too deep: content dropped");
            drop(stanza.take_nodes());
        }
        Bounded(stanza)
    }
}

impl FromEventsBuilder for BoundedBuilder {
    type Output = Bounded;

    fn feed(&mut self, ev: Event, _: &Context<'_>) -> Result<Option<Bounded>, Error> {
        if self.skipping > 0 {
            match ev {
                Event::StartElement(..) => self.skipping += 1,
                Event::EndElement(_) => self.skipping -= 1,
                Event::Text(..) | Event::XmlDeclaration(..) => {}
            }
            return Ok(None);
        }
        match ev {
            Event::StartElement(_, qname, attrs) if self.open.len() < MAX_DEPTH => {
                self.open.push(element(qname, attrs))
            }
            Event::StartElement(..) => (self.skipping, self.too_deep) = (1, true),
            Event::Text(_, text) => {
                if let Some(open) = self.open.last_mut() {
                    open.append_text_node(text);
                }
            }
            Event::XmlDeclaration(..) => {}
            Event::EndElement(_) => {
                let done = self.open.pop().expect("the stanza is open until its end");
                match self.open.last_mut() {
                    Some(parent) => drop(parent.append_child(done)),
                    None => return Ok(Some(self.finish(done))),
                }
            }
        }
        Ok(None)
    }
}

impl FromXml for Bounded {
    type Builder = BoundedBuilder;

    fn from_events(qname: QName, attrs: AttrMap, _: &Context<'_>) -> Result<BoundedBuilder, FromEventsError> {
        Ok(BoundedBuilder { open: vec![element(qname, attrs)], skipping: 0, too_deep: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_stanzas_as_minidom_does() {
        let xml = "<iq xmlns='jabber:client' type='set' id='1'><vault xmlns='urn:xmpp:mls:0'>\
                   <put name='a' if-version='0'>AAAA</put></vault>text<x xmlns='urn:x' a='b'/></iq>";
        let Bounded(el) = xso::from_bytes::<Bounded>(xml.as_bytes()).unwrap();
        assert_eq!(el, xml.parse::<Element>().unwrap());
    }

    #[test]
    fn a_stanza_nested_too_deep_arrives_without_children() {
        let depth = 20_000;
        let xml = format!(
            "<message xmlns='jabber:client' id='m'><body>{}{}</body></message>",
            "<x>".repeat(depth),
            "</x>".repeat(depth)
        );
        let Bounded(el) = xso::from_bytes::<Bounded>(xml.as_bytes()).unwrap();
        assert_eq!((el.name(), el.attr("id"), el.nodes().count()), ("message", Some("m"), 0));
        let at_limit = format!("<a xmlns='urn:x'>{}{}</a>", "<b>".repeat(MAX_DEPTH - 1), "</b>".repeat(MAX_DEPTH - 1));
        let Bounded(el) = xso::from_bytes::<Bounded>(at_limit.as_bytes()).unwrap();
        assert_eq!(el, at_limit.parse::<Element>().unwrap());
    }
}
