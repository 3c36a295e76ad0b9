//! Message Archive Management (XEP-0313 v2, with XEP-0059 paging) on group
//! JIDs (the group's archive) and directory JIDs (the account's inbox).

use minidom::Element;
use xmpp_parsers::ns;

use super::{format_time, malformed, n, parse_time, ProtocolError, NS};

pub const NS_MAM: &str = "urn:xmpp:mam:2";
pub const NS_MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";
pub const NS_RSM: &str = "http://jabber.org/protocol/rsm";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
pub const NS_DELAY: &str = "urn:xmpp:delay";
/// Service-specific filter fields (in the MAM form).
pub const FIELD_KIND: &str = "urn:xmpp:mls:0#kind";
pub const FIELD_EPOCH_FROM: &str = "urn:xmpp:mls:0#epoch-from";
pub const FIELD_EPOCH_TO: &str = "urn:xmpp:mls:0#epoch-to";

/// Where a page starts (XEP-0059).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cursor {
    /// From the beginning.
    #[default]
    First,
    After(String),
    Before(String),
    /// `<before/>` without content: the last page.
    Last,
}

/// A parsed MAM query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MamQuery {
    pub queryid: Option<String>,
    pub start: Option<i64>,
    pub end: Option<i64>,
    /// `with`: a device JID of the group (group/<device-id>).
    pub with: Option<String>,
    pub after_id: Option<String>,
    pub before_id: Option<String>,
    pub ids: Vec<String>,
    pub max: Option<usize>,
    pub cursor: Cursor,
    pub flip_page: bool,
    /// `urn:xmpp:mls:0#kind`: "handshake" (commits and proposals) or a kind.
    pub kind: Option<String>,
    pub epoch_from: Option<u64>,
    pub epoch_to: Option<u64>,
}

fn field_values(form: &Element) -> impl Iterator<Item = (&str, Vec<String>)> {
    form.children().filter(|f| f.is("field", ns::DATA_FORMS)).filter_map(|f| {
        let values = f.children().filter(|v| v.is("value", ns::DATA_FORMS)).map(Element::text).collect();
        Some((f.attr("var")?, values))
    })
}

fn single(values: Vec<String>, why: &'static str) -> Result<String, ProtocolError> {
    let mut it = values.into_iter();
    match (it.next(), it.next()) {
        (Some(v), None) => Ok(v),
        _ => Err(malformed(why)),
    }
}

/// RSM `<max/>`: a non-negative decimal integer. It is capped at
/// max-page-size anyway, so one too large for `usize` is not an error.
fn page_max(text: &str) -> Result<usize, ProtocolError> {
    let digits = text.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("RSM max is a number"));
    }
    Ok(digits.parse().unwrap_or(usize::MAX))
}

/// A XEP-0059 `<set/>` of a request: its `<max/>` and where the page starts.
pub fn parse_rsm(set: &Element) -> Result<(Option<usize>, Cursor), ProtocolError> {
    let max = set.get_child("max", NS_RSM).map(|m| page_max(&m.text())).transpose()?;
    let mut cursor = Cursor::First;
    if let Some(after) = set.get_child("after", NS_RSM) {
        cursor = Cursor::After(after.text());
    }
    if let Some(before) = set.get_child("before", NS_RSM) {
        let id = before.text();
        cursor = if id.is_empty() { Cursor::Last } else { Cursor::Before(id) };
    }
    Ok((max, cursor))
}

/// The `<set/>` of a request (client side).
pub fn rsm_request(max: Option<usize>, cursor: &Cursor) -> Element {
    let mut set = Element::builder("set", NS_RSM);
    if let Some(max) = max {
        set = set.append(Element::builder("max", NS_RSM).append(max.to_string()).build());
    }
    match cursor {
        Cursor::First => set,
        Cursor::After(id) => set.append(Element::builder("after", NS_RSM).append(id.as_str()).build()),
        Cursor::Before(id) => set.append(Element::builder("before", NS_RSM).append(id.as_str()).build()),
        Cursor::Last => set.append(Element::builder("before", NS_RSM).build()),
    }
    .build()
}

/// The `<set/>` of a result page: `<first index/>`, `<last/>` (absent for an
/// empty page) and `<count/>`.
pub fn rsm_result(first: Option<(&str, usize)>, last: Option<&str>, count: usize) -> Element {
    let mut set = Element::builder("set", NS_RSM);
    if let Some((id, index)) = first {
        set = set.append(Element::builder("first", NS_RSM).attr(n("index"), index.to_string()).append(id).build());
    }
    if let Some(last) = last {
        set = set.append(Element::builder("last", NS_RSM).append(last).build());
    }
    set.append(Element::builder("count", NS_RSM).append(count.to_string()).build()).build()
}

/// The `<first index/>` and `<count/>` of a result's `<set/>` (0 if absent).
pub fn parse_rsm_result(set: &Element) -> (usize, usize) {
    let number = |text: Option<String>| text.and_then(|t| t.trim().parse().ok()).unwrap_or_default();
    let index = number(set.get_child("first", NS_RSM).and_then(|f| f.attr("index")).map(str::to_owned));
    let count = number(set.get_child("count", NS_RSM).map(Element::text));
    (index, count)
}

impl MamQuery {
    pub fn parse(query: &Element) -> Result<Self, ProtocolError> {
        // Every result echoes the queryid: bounded like an 'id'.
        let queryid = query.attr("queryid").map(str::to_owned);
        if queryid.as_ref().is_some_and(|q| q.len() > super::MAX_ID) {
            return Err(malformed("a queryid is at most 1024 octets"));
        }
        let mut q = MamQuery { queryid, ..Default::default() };
        if let Some(form) = query.get_child("x", ns::DATA_FORMS) {
            for (var, values) in field_values(form) {
                let one = |why| single(values.clone(), why);
                match var {
                    "FORM_TYPE" => {}
                    "start" => q.start = Some(parse_time(&one("one start")?)?),
                    "end" => q.end = Some(parse_time(&one("one end")?)?),
                    "with" => q.with = Some(one("one with")?),
                    "after-id" => q.after_id = Some(one("one after-id")?),
                    "before-id" => q.before_id = Some(one("one before-id")?),
                    "ids" => q.ids = values,
                    FIELD_KIND => q.kind = Some(one("one kind")?),
                    FIELD_EPOCH_FROM => q.epoch_from = Some(one("one epoch-from")?.parse().map_err(|_| malformed("epoch-from"))?),
                    FIELD_EPOCH_TO => q.epoch_to = Some(one("one epoch-to")?.parse().map_err(|_| malformed("epoch-to"))?),
                    _ => return Err(malformed("unknown MAM form field")),
                }
            }
        }
        if let Some(set) = query.get_child("set", NS_RSM) {
            (q.max, q.cursor) = parse_rsm(set)?;
        }
        q.flip_page = query.has_child("flip-page", NS_MAM);
        Ok(q)
    }
}

/// Builds a query (client side).
pub fn query_element(queryid: &str, fields: &[(&str, &str)], max: usize, cursor: &Cursor, flip: bool) -> Element {
    let mut form = Element::builder("x", ns::DATA_FORMS).attr(n("type"), "submit").append(
        Element::builder("field", ns::DATA_FORMS)
            .attr(n("var"), "FORM_TYPE")
            .attr(n("type"), "hidden")
            .append(Element::builder("value", ns::DATA_FORMS).append(NS_MAM).build())
            .build(),
    );
    for (var, value) in fields {
        form = form.append(
            Element::builder("field", ns::DATA_FORMS)
                .attr(n("var"), *var)
                .append(Element::builder("value", ns::DATA_FORMS).append(*value).build())
                .build(),
        );
    }
    let mut q = Element::builder("query", NS_MAM)
        .attr(n("queryid"), queryid)
        .append(form.build())
        .append(rsm_request(Some(max), cursor));
    if flip {
        q = q.append(Element::builder("flip-page", NS_MAM).build());
    }
    q.build()
}

/// One archived stanza as a MAM result message.
pub fn result_message(to: &str, from: &str, queryid: Option<&str>, id: &str, stamp: i64, inner: Element) -> Element {
    let mut result = Element::builder("result", NS_MAM).attr(n("id"), id);
    if let Some(q) = queryid {
        result = result.attr(n("queryid"), q);
    }
    let forwarded = Element::builder("forwarded", NS_FORWARD)
        .append(Element::builder("delay", NS_DELAY).attr(n("stamp"), format_time(stamp)).build())
        .append(inner)
        .build();
    Element::builder("message", crate::xmpp::namespace::CLIENT)
        .attr(n("from"), from)
        .attr(n("to"), to)
        .attr(n("id"), crate::store::new_stanza_id())
        .append(result.append(forwarded).build())
        .build()
}

/// What ends a query: `<fin complete><set><first index/><last/><count/></set></fin>`.
pub struct Fin {
    pub complete: bool,
    pub first: Option<(String, usize)>,
    pub last: Option<String>,
    pub count: usize,
}

impl Fin {
    pub fn to_element(&self) -> Element {
        let first = self.first.as_ref().map(|(id, index)| (id.as_str(), *index));
        let set = rsm_result(first, self.last.as_deref(), self.count);
        let mut fin = Element::builder("fin", NS_MAM);
        if self.complete {
            fin = fin.attr(n("complete"), "true");
        }
        fin.append(set).build()
    }
}

/// `<metadata><start id timestamp/><end id timestamp/></metadata>` (#extended).
pub fn metadata_element(ends: Option<((String, i64), (String, i64))>) -> Element {
    let mut b = Element::builder("metadata", NS_MAM);
    if let Some(((first, t1), (last, t2))) = ends {
        b = b
            .append(Element::builder("start", NS_MAM).attr(n("id"), first).attr(n("timestamp"), format_time(t1)).build())
            .append(Element::builder("end", NS_MAM).attr(n("id"), last).attr(n("timestamp"), format_time(t2)).build());
    }
    b.build()
}

/// The query form (IQ get on `<query/>`): the fields this archive supports.
pub fn form_fields() -> Element {
    let field = |var: &str, type_: &str| Element::builder("field", ns::DATA_FORMS).attr(n("var"), var).attr(n("type"), type_).build();
    let form = Element::builder("x", ns::DATA_FORMS)
        .attr(n("type"), "form")
        .append(
            Element::builder("field", ns::DATA_FORMS)
                .attr(n("var"), "FORM_TYPE")
                .attr(n("type"), "hidden")
                .append(Element::builder("value", ns::DATA_FORMS).append(NS_MAM).build())
                .build(),
        )
        .append(field("with", "jid-single"))
        .append(field("start", "text-single"))
        .append(field("end", "text-single"))
        .append(field("after-id", "text-single"))
        .append(field("before-id", "text-single"))
        .append(field("ids", "text-multi"))
        .append(field(FIELD_KIND, "list-single"))
        .append(field(FIELD_EPOCH_FROM, "text-single"))
        .append(field(FIELD_EPOCH_TO, "text-single"));
    Element::builder("query", NS_MAM).append(form.build()).build()
}

/// `<ack xmlns='urn:xmpp:mls:0' device id/>`: the device has applied
/// everything up to and including the stanza id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub device: String,
    pub id: String,
}

impl Ack {
    pub fn parse(el: &Element) -> Result<Self, ProtocolError> {
        super::known_children(el, &[])?;
        Ok(Ack {
            device: super::attr(el, "device", "ack without device")?.to_owned(),
            id: super::attr(el, "id", "ack without id")?.to_owned(),
        })
    }

    pub fn to_element(&self) -> Element {
        Element::builder("ack", NS).attr(n("device"), self.device.as_str()).attr(n("id"), self.id.as_str()).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trip() {
        let el = query_element("q1", &[("after-id", "abc"), (FIELD_KIND, "handshake")], 10, &Cursor::Last, true);
        let q = MamQuery::parse(&el).unwrap();
        assert_eq!(q.queryid.as_deref(), Some("q1"));
        assert_eq!(q.after_id.as_deref(), Some("abc"));
        assert_eq!(q.kind.as_deref(), Some("handshake"));
        assert_eq!((q.max, q.cursor, q.flip_page), (Some(10), Cursor::Last, true));
    }
}
