//! The subset of XEP-0060 that an account's directory speaks: publish,
//! retract, items retrieval, subscribe and unsubscribe on its two nodes, and
//! the event notifications that go with them.

use minidom::Element;
use xmpp_parsers::jid::Jid;

use super::{attr, malformed, n, ProtocolError};

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";

/// One `<item/>` of a publish request.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemIn {
    pub id: Option<String>,
    pub payload: Element,
}

/// A parsed `<pubsub xmlns='http://jabber.org/protocol/pubsub'/>` request.
#[derive(Debug, Clone, PartialEq)]
pub enum PubsubRequest {
    Publish { node: String, items: Vec<ItemIn> },
    Retract { node: String, ids: Vec<String> },
    Items { node: String, ids: Vec<String> },
    Subscribe { node: String, jid: Jid },
    Unsubscribe { node: String, jid: Jid },
    /// A XEP-0060 action this service does not implement (e.g. `create`):
    /// answered with `feature-not-implemented`.
    Unsupported(String),
}

impl TryFrom<&Element> for PubsubRequest {
    type Error = ProtocolError;

    fn try_from(pubsub: &Element) -> Result<Self, ProtocolError> {
        // publish-options may accompany publish (OMEMO clients send it); the
        // directory's nodes have fixed options, so it is ignored.
        let mut actions = pubsub.children().filter(|c| c.name() != "publish-options");
        let action = actions.next().ok_or(malformed("pubsub request without an action"))?;
        if actions.next().is_some() {
            return Err(malformed("more than one pubsub action"));
        }
        if action.ns() != NS_PUBSUB {
            return Err(malformed("pubsub action in a foreign namespace"));
        }
        let node = || attr(action, "node", "pubsub action without a node").map(str::to_owned);
        let jid = || {
            Jid::new(attr(action, "jid", "subscription without a jid")?)
                .map_err(|_| malformed("invalid subscription jid"))
        };
        Ok(match action.name() {
            "publish" => PubsubRequest::Publish { node: node()?, items: publish_items(action)? },
            "retract" => PubsubRequest::Retract { node: node()?, ids: item_ids(action, true)? },
            "items" => PubsubRequest::Items { node: node()?, ids: item_ids(action, false)? },
            "subscribe" => PubsubRequest::Subscribe { node: node()?, jid: jid()? },
            "unsubscribe" => PubsubRequest::Unsubscribe { node: node()?, jid: jid()? },
            other => PubsubRequest::Unsupported(other.to_owned()),
        })
    }
}

fn items_of(action: &Element) -> impl Iterator<Item = &Element> {
    action.children().filter(|c| c.is("item", NS_PUBSUB))
}

fn publish_items(action: &Element) -> Result<Vec<ItemIn>, ProtocolError> {
    let items = items_of(action)
        .map(|item| {
            let mut payloads = item.children();
            match (payloads.next(), payloads.next()) {
                (Some(p), None) => {
                    Ok(ItemIn { id: item.attr("id").map(str::to_owned), payload: p.clone() })
                }
                _ => Err(malformed("a published item carries exactly one payload")),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if items.is_empty() {
        return Err(malformed("publish without an item"));
    }
    Ok(items)
}

fn item_ids(action: &Element, required: bool) -> Result<Vec<String>, ProtocolError> {
    let ids = items_of(action)
        .map(|i| attr(i, "id", "item without an id").map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()?;
    if required && ids.is_empty() {
        return Err(malformed("retract without an item"));
    }
    Ok(ids)
}

fn pubsub(child: Element) -> Element {
    Element::builder("pubsub", NS_PUBSUB).append(child).build()
}

fn item(id: &str, payload: Option<Element>) -> Element {
    let mut b = Element::builder("item", NS_PUBSUB).attr(n("id"), id);
    if let Some(p) = payload {
        b = b.append(p);
    }
    b.build()
}

/// The XEP-0060 feature name of an action, for `<unsupported feature/>`.
pub fn feature_of(action: &str) -> &'static str {
    match action {
        "create" => "create-nodes",
        "delete" => "delete-nodes",
        "configure" => "config-node",
        "options" => "subscription-options",
        "purge" => "purge-nodes",
        "subscriptions" => "retrieve-subscriptions",
        "affiliations" => "retrieve-affiliations",
        "default" => "retrieve-default",
        "publish" => "publish",
        "retract" => "retract-items",
        "items" => "retrieve-items",
        "subscribe" => "subscribe",
        _ => "unknown-action",
    }
}

/// Builds a publish request (client side).
pub fn publish_request(node: &str, items: Vec<(Option<String>, Element)>) -> Element {
    let mut publish = Element::builder("publish", NS_PUBSUB).attr(n("node"), node);
    for (id, payload) in items {
        let mut b = Element::builder("item", NS_PUBSUB);
        if let Some(id) = id {
            b = b.attr(n("id"), id);
        }
        publish = publish.append(b.append(payload).build());
    }
    pubsub(publish.build())
}

/// Builds a retract, items, subscribe or unsubscribe request (client side).
pub fn simple_request(action: &str, node: &str, ids: &[&str], jid: Option<&str>) -> Element {
    let mut b = Element::builder(action, NS_PUBSUB).attr(n("node"), node);
    if let Some(jid) = jid {
        b = b.attr(n("jid"), jid);
    }
    for id in ids {
        b = b.append(item(id, None));
    }
    pubsub(b.build())
}

/// `<pubsub><publish node><item id/>…</publish></pubsub>`: the ids assigned.
pub fn publish_result(node: &str, ids: &[String]) -> Element {
    let publish = Element::builder("publish", NS_PUBSUB)
        .attr(n("node"), node)
        .append_all(ids.iter().map(|id| item(id, None)));
    pubsub(publish.build())
}

/// `<pubsub><items node><item id>payload</item>…</items></pubsub>`.
pub fn items_result(node: &str, items: Vec<(String, Element)>) -> Element {
    let list = Element::builder("items", NS_PUBSUB)
        .attr(n("node"), node)
        .append_all(items.into_iter().map(|(id, p)| item(&id, Some(p))));
    pubsub(list.build())
}

pub fn subscription_result(node: &str, jid: &Jid) -> Element {
    pubsub(
        Element::builder("subscription", NS_PUBSUB)
            .attr(n("node"), node)
            .attr(n("jid"), jid.as_str())
            .attr(n("subscription"), "subscribed")
            .build(),
    )
}

/// The items of a result or event, as (id, payload) pairs (client side).
pub fn parse_items(container: &Element, ns: &str) -> Vec<(String, Option<Element>)> {
    container
        .children()
        .filter(|c| c.is("item", ns))
        .filter_map(|i| Some((i.attr("id")?.to_owned(), i.children().next().cloned())))
        .collect()
}

/// An event notification: published items or retracted ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Published { node: String, items: Vec<(String, Element)> },
    Retracted { node: String, ids: Vec<String> },
}

impl Event {
    pub fn to_element(&self) -> Element {
        let (node, children): (&str, Vec<Element>) = match self {
            Event::Published { node, items } => (
                node,
                items
                    .iter()
                    .map(|(id, p)| {
                        Element::builder("item", NS_EVENT).attr(n("id"), id.as_str()).append(p.clone()).build()
                    })
                    .collect(),
            ),
            Event::Retracted { node, ids } => (
                node,
                ids.iter()
                    .map(|id| Element::builder("retract", NS_EVENT).attr(n("id"), id.as_str()).build())
                    .collect(),
            ),
        };
        let items = Element::builder("items", NS_EVENT).attr(n("node"), node).append_all(children);
        Element::builder("event", NS_EVENT).append(items.build()).build()
    }

    pub fn parse(event: &Element) -> Result<Self, ProtocolError> {
        let items = event.get_child("items", NS_EVENT).ok_or(malformed("event without items"))?;
        let node = attr(items, "node", "event items without a node")?.to_owned();
        let retracted: Vec<String> = items
            .children()
            .filter(|c| c.is("retract", NS_EVENT))
            .filter_map(|r| r.attr("id").map(str::to_owned))
            .collect();
        if !retracted.is_empty() {
            return Ok(Event::Retracted { node, ids: retracted });
        }
        let items = parse_items(items, NS_EVENT)
            .into_iter()
            .filter_map(|(id, p)| Some((id, p?)))
            .collect();
        Ok(Event::Published { node, items })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Result<PubsubRequest, ProtocolError> {
        PubsubRequest::try_from(&xml.parse::<Element>().unwrap())
    }

    #[test]
    fn parses_publish_with_options_and_rejects_two_actions() {
        let r = parse(
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='n'>\
             <item id='a'><x xmlns='urn:x'/></item></publish><publish-options/></pubsub>",
        )
        .unwrap();
        assert!(matches!(r, PubsubRequest::Publish { ref node, ref items } if node == "n" && items.len() == 1));
        assert!(parse(
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='n'/><items node='n'/></pubsub>"
        )
        .is_err());
        assert_eq!(
            parse("<pubsub xmlns='http://jabber.org/protocol/pubsub'><create node='n'/></pubsub>").unwrap(),
            PubsubRequest::Unsupported("create".into())
        );
    }

    #[test]
    fn events_round_trip() {
        let payload: Element = "<d xmlns='urn:x'/>".parse().unwrap();
        for ev in [
            Event::Published { node: "n".into(), items: vec![("a".into(), payload)] },
            Event::Retracted { node: "n".into(), ids: vec!["a".into()] },
        ] {
            assert_eq!(Event::parse(&ev.to_element()).unwrap(), ev);
        }
    }
}
