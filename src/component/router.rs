//! The router: every stanza from the server goes through [`route`], which
//! returns at most one reply. It is the one place where service errors
//! become stanza errors, and where stanzas and errors are counted.
//!
//! Rules (RFC 6120 §8.2.3, §8.3.1): every IQ get/set gets exactly one reply;
//! an error, or an IQ result, is never answered.

use std::time::Instant;

use minidom::Element;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::ns;
use xmpp_parsers::stanza_error::{DefinedCondition as C, ErrorType as T, StanzaError};

use crate::metrics::{metrics, Condition, Operation, Outcome, StanzaKind};
use crate::protocol::address::Address;
use crate::protocol::disco::PING;
use crate::protocol::error::{invalid_message, pubsub_condition, rate_limited, stanza_error, AppCondition};
use crate::protocol::groups::WrongEpoch;
use crate::protocol::keypackages::rejections_element;
use crate::protocol::mam::NS_MAM;
use crate::protocol::pubsub::NS_PUBSUB;
use crate::protocol::vault::version_mismatch;
use crate::protocol::{ProtocolError, MAX_ID, NS};
use crate::service::{serialized_size, Copies, IqKind, IqRequest, Issued, Response, Service, ServiceError};
use crate::xmpp::namespace::{CLIENT, COMPONENT};

/// One stanza to send, or the copies of one (a group message's fan-out).
#[derive(Debug)]
pub enum Outgoing {
    Stanza(Element),
    Copies(Copies),
}

impl Outgoing {
    /// The stanzas, copies made one at a time as they are taken.
    pub fn into_stanzas(self) -> Box<dyn Iterator<Item = Element> + Send> {
        match self {
            Outgoing::Stanza(s) => Box::new(std::iter::once(s)),
            Outgoing::Copies(c) => Box::new(c.into_stanzas()),
        }
    }
}

/// What to send in answer to one stanza.
#[derive(Debug, Default)]
pub struct Routed {
    /// At most one reply, first, then the messages the stanza caused.
    pub stanzas: Vec<Outgoing>,
    /// Group archive position the stanzas must be delivered in order of.
    pub order: Option<(Vec<u8>, u64)>,
    /// Then these, each in its group's order.
    pub issued: Vec<Issued>,
}

impl From<Vec<Element>> for Routed {
    fn from(stanzas: Vec<Element>) -> Self {
        Routed { stanzas: stanzas.into_iter().map(Outgoing::Stanza).collect(), ..Default::default() }
    }
}

pub async fn route(service: &Service, stanza: Element) -> Routed {
    let m = metrics();
    m.stanzas_received.inc(StanzaKind::of(stanza.name()));
    let (operation, started) = (operation(&stanza), Instant::now());
    let mut routed = dispatch(service, stanza).await;
    routed.stanzas = bound_sizes(routed.stanzas, service.max_stanza_out());
    if let Some(operation) = operation {
        m.request(operation, started.elapsed());
    }
    for out in &routed.stanzas {
        match out {
            Outgoing::Stanza(s) => count_sent(service, s.name(), s.attr("to")),
            Outgoing::Copies(c) => c.to().iter().for_each(|to| count_sent(service, "message", Some(to))),
        }
    }
    routed
}

fn count_sent(service: &Service, kind: &str, to: Option<&str>) {
    metrics().stanzas_sent.inc(StanzaKind::of(kind));
    if let Some(domain) = to.and_then(|to| Jid::new(to).ok()).and_then(|to| service.other_domain(to.domain().as_str())) {
        metrics().federation_sent(domain);
    }
}

/// The operation a request asks for, named as [`dispatch`] and
/// [`Service::handle_iq`] tell them apart; `None` for a stanza that is no
/// request (an error, an IQ result, a presence probe).
fn operation(stanza: &Element) -> Option<Operation> {
    let type_ = stanza.attr("type");
    let name = match (stanza.name(), type_) {
        (_, Some("error")) => return None,
        ("message", Some("groupchat")) => "message",
        ("presence", None) => "feed-join",
        ("presence", Some("unavailable")) => "feed-leave",
        ("iq", Some(kind @ ("get" | "set"))) => match single_child(stanza) {
            Some(p) => iq_operation(p, kind == "get"),
            None => "other",
        },
        ("message", _) => "other",
        _ => return None,
    };
    Some(Operation::named(name))
}

fn iq_operation(payload: &Element, get: bool) -> &str {
    match (payload.name(), payload.ns().as_str()) {
        ("query", ns::DISCO_INFO) => "disco-info",
        ("query", ns::DISCO_ITEMS) => "disco-items",
        ("ping", PING) => "ping",
        ("pubsub", NS_PUBSUB) => payload.children().next().map(|action| action.name()).unwrap_or("other"),
        ("query", NS_MAM) if get => "mam-form",
        ("query", NS_MAM) => "mam-query",
        ("metadata", NS_MAM) => "mam-metadata",
        ("vault", NS) if get => "vault-get",
        ("vault", NS) => "vault-set",
        (name @ ("claim" | "ack" | "create" | "commit" | "proposal" | "group-info" | "leave"), NS) => name,
        _ => "other",
    }
}

/// The last line of defence (xep/ §Stanza Size Limits): a stanza over the
/// server's limit would close the component stream. An IQ result over `max`
/// bytes becomes an error reply; any other stanza over it is dropped. Both
/// are logged and counted. Copies are measured without being made.
fn bound_sizes(stanzas: Vec<Outgoing>, max: usize) -> Vec<Outgoing> {
    stanzas
        .into_iter()
        .filter_map(|out| match out {
            Outgoing::Stanza(stanza) => bound_size(stanza, max).map(Outgoing::Stanza),
            Outgoing::Copies(mut copies) => {
                copies.retain(|size| within(size, "message", max));
                (!copies.is_empty()).then_some(Outgoing::Copies(copies))
            }
        })
        .collect()
}

fn bound_size(stanza: Element, max: usize) -> Option<Element> {
    if within(serialized_size(&stanza), stanza.name(), max) {
        return Some(stanza);
    }
    let error = (stanza.name() == "iq" && stanza.attr("type") == Some("result"))
        .then(|| with_error(addressed(&stanza, "error", SAME_ADDRESSES), &ServiceError::ReplyTooBig));
    error.filter(|e| serialized_size(e) + NS_GROWTH <= max)
}

/// Whether a `kind` stanza of `size` octets fits; counted and logged if not.
fn within(size: usize, kind: &str, max: usize) -> bool {
    let size = size + NS_GROWTH;
    if size > max {
        metrics().stanzas_too_big.inc(StanzaKind::of(kind));
        tracing::warn!(kind, size, max, "stanza over limits.max_stanza_out not sent");
    }
    size <= max
}

fn check_id(stanza: &Element) -> Result<(), ServiceError> {
    match stanza.attr("id").is_some_and(|id| id.len() > MAX_ID) {
        true => Err(ProtocolError::Malformed("an id is at most 1024 octets").into()),
        false => Ok(()),
    }
}

/// The component stream's namespace is longer than `jabber:client`, which
/// stanzas carry inside the component (DESIGN §5).
const NS_GROWTH: usize = COMPONENT.len() - CLIENT.len();

async fn dispatch(service: &Service, stanza: Element) -> Routed {
    if stanza.attr("type") == Some("error") {
        return Routed::default(); // never answer an error
    }
    let (Some(from), Some(to)) = (jid_attr(&stanza, "from"), jid_attr(&stanza, "to")) else {
        tracing::warn!("stanza without valid from/to dropped");
        return Routed::default();
    };
    match stanza.name() {
        "iq" => route_iq(service, &stanza, from, to).await,
        "message" => route_message(service, &stanza, &from, &to).await,
        "presence" => route_presence(service, &stanza, &from, &to).await,
        _ => Routed::default(),
    }
}

/// Group messages; anything else is bounced so the sender knows.
async fn route_message(service: &Service, msg: &Element, from: &Jid, to: &Jid) -> Routed {
    let outcome = match (service.admit(from).await.and_then(|()| check_id(msg)), Address::parse(to)) {
        (Err(e), _) => Err(e),
        (Ok(()), Ok(Address::Group(id))) if to.resource().is_none() && msg.attr("type") == Some("groupchat") => {
            service.group_message(from, &id, msg).await
        }
        (Ok(()), Ok(_)) => Err(ServiceError::Unsupported),
        (Ok(()), Err(e)) => Err(e.into()),
    };
    respond(msg, outcome)
}

/// Presence to a device JID of a group joins or leaves its live feed.
async fn route_presence(service: &Service, presence: &Element, from: &Jid, to: &Jid) -> Routed {
    let (Ok(Address::Group(id)), Some(device)) = (Address::parse(to), to.resource()) else {
        return Routed::default();
    };
    let unavailable = match presence.attr("type") {
        None => false,
        Some("unavailable") => true,
        _ => return Routed::default(), // probes, subscriptions: not ours
    };
    // Leaving is not refused for the rate: a full JID that is not on the
    // feed costs one read and no answer, and one that is got there by a
    // join, which was rate-limited.
    let outcome = if unavailable {
        service.leave_feed(from, &id, device.as_str()).await
    } else {
        match service.admit(from).await.and_then(|()| check_id(presence)) {
            Ok(()) => service.join_feed(from, &id, device.as_str()).await,
            Err(e) => Err(e),
        }
    };
    if unavailable && outcome.is_err() {
        return Routed::default();
    }
    respond(presence, outcome)
}

/// The service's response as stanzas, or the stanza's error reply.
fn respond(stanza: &Element, outcome: Result<Response, ServiceError>) -> Routed {
    match outcome {
        Ok(Response { payload, copies, messages, order, reply_last, issued }) => {
            let reply = (stanza.name() == "iq").then(|| result_reply(stanza, payload)).map(Outgoing::Stanza);
            let (first, last) = if reply_last { (None, reply) } else { (reply, None) };
            let copies = copies.map(Outgoing::Copies);
            let messages = messages.into_iter().map(Outgoing::Stanza);
            let stanzas = first.into_iter().chain(copies).chain(messages).chain(last).collect();
            Routed { stanzas, order, issued }
        }
        Err(e) => {
            log_error(&e);
            vec![with_error(addressed(stanza, "error", SWAPPED_ADDRESSES), &e)].into()
        }
    }
}

async fn route_iq(service: &Service, iq: &Element, from: Jid, to: Jid) -> Routed {
    let kind = match iq.attr("type") {
        Some("get") => IqKind::Get,
        Some("set") => IqKind::Set,
        _ => return Routed::default(), // result or invalid: never answered
    };
    let Some(id) = iq.attr("id").map(str::to_owned) else { return Routed::default() };
    let payload = single_child(iq);
    let outcome = match (service.admit(&from).await.and_then(|()| check_id(iq)), Address::parse(&to), payload) {
        (Err(e), _, _) => Err(e),
        (Ok(()), Err(e), _) => Err(e.into()),
        (Ok(()), Ok(_), None) => {
            Err(ProtocolError::Malformed("an IQ get or set carries exactly one child element").into())
        }
        (Ok(()), Ok(address), Some(payload)) => {
            let req = IqRequest { id, from, to, address, kind, payload: payload.clone() };
            service.handle_iq(&req).await
        }
    };
    if kind == IqKind::Set && payload.is_some_and(|p| p.is("commit", NS)) {
        metrics().commits.inc(if outcome.is_ok() { Outcome::Accepted } else { Outcome::Rejected });
    }
    respond(iq, outcome)
}

fn single_child(el: &Element) -> Option<&Element> {
    let mut children = el.children();
    match (children.next(), children.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

fn jid_attr(el: &Element, name: &str) -> Option<Jid> {
    el.attr(name).and_then(|s| Jid::new(s).ok())
}

/// The one mapping from service errors to stanza errors.
pub fn to_stanza_error(e: &ServiceError) -> StanzaError {
    use ServiceError as E;
    let app = |a: AppCondition| Some(a.element());
    match e {
        E::Protocol(ProtocolError::BadAddress) => stanza_error(T::Modify, C::JidMalformed, None, None),
        E::Protocol(ProtocolError::Malformed(why)) => stanza_error(T::Modify, C::BadRequest, None, Some(why)),
        E::Protocol(ProtocolError::DuplicateDevice) => {
            stanza_error(T::Modify, C::BadRequest, app(AppCondition::DuplicateDevice), None)
        }
        E::PayloadTooBig => stanza_error(T::Modify, C::PolicyViolation, app(AppCondition::PayloadTooBig), None),
        E::ReplyTooBig => stanza_error(T::Modify, C::PolicyViolation, app(AppCondition::ReplyTooBig), None),
        E::UnknownGroup => stanza_error(T::Cancel, C::ItemNotFound, app(AppCondition::UnknownGroup), None),
        E::NotFound => stanza_error(T::Cancel, C::ItemNotFound, None, None),
        E::VersionMismatch { current } => {
            stanza_error(T::Cancel, C::Conflict, Some(version_mismatch(*current)), None)
        }
        E::HistoryPruned => stanza_error(T::Cancel, C::ItemNotFound, app(AppCondition::HistoryPruned), None),
        E::TreeUnavailable => stanza_error(T::Cancel, C::ItemNotFound, app(AppCondition::TreeUnavailable), None),
        E::PartsMissing => stanza_error(T::Modify, C::ItemNotFound, app(AppCondition::PartsMissing), None),
        E::PartOutOfOrder => stanza_error(T::Modify, C::UnexpectedRequest, app(AppCondition::PartOutOfOrder), None),
        E::Forbidden => stanza_error(T::Auth, C::Forbidden, None, None),
        E::Limit(a) => stanza_error(T::Modify, C::PolicyViolation, app(*a), None),
        E::KeyInUse => stanza_error(T::Cancel, C::Conflict, app(AppCondition::SignatureKeyInUse), None),
        E::InvalidKeyPackages(list) => {
            stanza_error(T::Modify, C::NotAcceptable, Some(rejections_element(list)), None)
        }
        E::RateLimited { retry_after_secs } => {
            stanza_error(T::Wait, C::ResourceConstraint, Some(rate_limited(*retry_after_secs)), None)
        }
        E::InvalidJid => stanza_error(T::Modify, C::BadRequest, Some(pubsub_condition("invalid-jid", None)), None),
        E::NotSubscribed => {
            stanza_error(T::Cancel, C::UnexpectedRequest, Some(pubsub_condition("not-subscribed", None)), None)
        }
        E::PubsubUnsupported(feature) => {
            stanza_error(T::Cancel, C::FeatureNotImplemented, Some(pubsub_condition("unsupported", Some(feature))), None)
        }
        E::InvalidMessage(i) => stanza_error(T::Modify, C::NotAcceptable, Some(invalid_message(*i)), None),
        E::WrongEpoch(w) => stanza_error(T::Cancel, C::Conflict, Some(w.to_element()), None),
        E::GroupExists => stanza_error(T::Cancel, C::Conflict, app(AppCondition::GroupExists), None),
        E::NotAMember => stanza_error(T::Auth, C::Forbidden, app(AppCondition::NotAMember), None),
        E::NotJoined => stanza_error(T::Modify, C::NotAcceptable, app(AppCondition::NotJoined), None),
        E::Refused(a) => stanza_error(T::Modify, C::NotAcceptable, app(*a), None),
        E::StaleEpoch { current } => {
            let w = WrongEpoch { epoch: *current, commit: None };
            stanza_error(T::Modify, C::NotAcceptable, Some(w.to_element()), None)
        }
        E::Unsupported => stanza_error(T::Cancel, C::ServiceUnavailable, None, None),
        E::DomainNotAllowed => stanza_error(T::Auth, C::Forbidden, app(AppCondition::DomainNotAllowed), None),
        E::Store(_) => stanza_error(T::Wait, C::InternalServerError, None, None),
    }
}

/// The defined condition of an error reply, as a metrics label.
fn condition(reply: &Element) -> Condition {
    let error = reply.get_child("error", CLIENT);
    let defined = error.and_then(|e| e.children().find(|c| c.ns() == ns::XMPP_STANZAS && c.name() != "text"));
    Condition::named(defined.map(|c| c.name()).unwrap_or_default())
}

fn log_error(e: &ServiceError) {
    match e {
        ServiceError::Store(e) => tracing::error!(error = %e, "store failure"),
        e => tracing::debug!(error = %e, "request refused"),
    }
}

/// (attribute, source attribute) of a reply: addresses swapped, same id.
const SWAPPED_ADDRESSES: [(&str, &str); 3] = [("id", "id"), ("from", "to"), ("to", "from")];
/// ...and of a stanza that replaces another one.
const SAME_ADDRESSES: [(&str, &str); 3] = [("id", "id"), ("from", "from"), ("to", "to")];

/// An empty stanza of the same kind, with `type_` and the addresses of `stanza`.
fn addressed(stanza: &Element, type_: &str, addresses: [(&str, &str); 3]) -> Element {
    let mut b = Element::builder(stanza.name(), CLIENT).attr("type".try_into().expect("ncname"), type_);
    for (attr, source) in addresses {
        if let Some(v) = stanza.attr(source) {
            b = b.attr(attr.try_into().expect("ncname"), v);
        }
    }
    b.build()
}

fn result_reply(iq: &Element, payload: Option<Element>) -> Element {
    let mut reply = addressed(iq, "result", SWAPPED_ADDRESSES);
    if let Some(p) = payload {
        reply.append_child(p);
    }
    reply
}

/// `reply` with the stanza error of `e`, counted.
fn with_error(mut reply: Element, e: &ServiceError) -> Element {
    reply.append_child(to_stanza_error(e).into());
    metrics().stanza_errors.inc(condition(&reply));
    reply
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::store::Store;

    fn service(dir: &std::path::Path) -> Service {
        let mut config =
            Config::from_toml("[component]\njid = \"mls.example.org\"\nsecret = \"s\"\n", Vec::new()).unwrap();
        config.store.path = dir.join("s.db");
        let store = Store::open(&config.store).unwrap();
        Service::new(Arc::new(config), store)
    }

    fn stanza(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    /// The stanzas as they go out, copies made.
    fn sent(stanzas: Vec<Outgoing>) -> Vec<Element> {
        stanzas.into_iter().flat_map(Outgoing::into_stanzas).collect()
    }

    #[tokio::test]
    async fn iq_without_exactly_one_child_is_bad_request() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path());
        for body in ["", "<a xmlns='urn:x'/><b xmlns='urn:x'/>"] {
            let iq = format!(
                "<iq xmlns='jabber:client' type='get' id='1' from='a@example.org/r' to='mls.example.org'>{body}</iq>"
            );
            let [reply] = <[Element; 1]>::try_from(sent(route(&service, stanza(&iq)).await.stanzas)).expect("one reply");
            assert_eq!(reply.attr("type"), Some("error"));
            assert_eq!(reply.attr("to"), Some("a@example.org/r"));
            let error = StanzaError::try_from(reply.get_child("error", CLIENT).unwrap().clone()).unwrap();
            assert_eq!(error.defined_condition, C::BadRequest);
        }
    }

    #[test]
    fn no_stanza_over_max_stanza_out_is_sent() {
        let big = "A".repeat(1000);
        let result = stanza(&format!(
            "<iq xmlns='jabber:client' type='result' id='7' from='mls.example.org' to='a@example.org/r'><x xmlns='urn:x'>{big}</x></iq>"
        ));
        let message = stanza(&format!("<message xmlns='jabber:client' to='a@example.org'><x xmlns='urn:x'>{big}{big}</x></message>"));
        let small = stanza("<message xmlns='jabber:client' to='a@example.org'/>");
        let limit = serialized_size(&result) + NS_GROWTH - 1;
        let out = bound_sizes([result.clone(), message, small.clone()].map(Outgoing::Stanza).into(), limit);
        let [error, kept] = <[Element; 2]>::try_from(sent(out)).expect("the message over the limit is dropped");
        assert_eq!(kept, small);
        assert_eq!(
            (error.attr("type"), error.attr("id"), error.attr("from"), error.attr("to")),
            (Some("error"), Some("7"), Some("mls.example.org"), Some("a@example.org/r"))
        );
        let e = StanzaError::try_from(error.get_child("error", CLIENT).unwrap().clone()).unwrap();
        assert_eq!(e.defined_condition, C::PolicyViolation);
        assert!(e.other.unwrap().is("reply-too-big", crate::protocol::NS_ERRORS));
        // An error that would be over the limit too is not sent either.
        assert_eq!(sent(bound_sizes(vec![Outgoing::Stanza(result.clone())], 100)), vec![]);
        assert_eq!(sent(bound_sizes(vec![Outgoing::Stanza(result.clone())], limit + 1)), vec![result]);
    }

    /// Copies are measured without being made, each with its own 'to'
    /// (escaped as it is sent): one over the limit is dropped, alone.
    #[test]
    fn copies_over_max_stanza_out_are_dropped_one_by_one() {
        let message = stanza("<message xmlns='jabber:client' from='g@mls.example.org/d' type='groupchat'><x xmlns='urn:x'>payload</x></message>");
        let to = ["a@example.org/r".to_owned(), format!("b@example.org/{}", "&".repeat(40)), "c@example.org/r".to_owned()];
        let copies = Copies::new(message, to.to_vec());
        let made: Vec<usize> = copies.stanzas().map(|c| serialized_size(&c)).collect();
        assert_eq!(copies.sizes().collect::<Vec<_>>(), made, "the sizes of the copies as made");
        let limit = made[0] + NS_GROWTH;
        let kept = sent(bound_sizes(vec![Outgoing::Copies(copies.clone())], limit));
        assert_eq!(kept, vec![copies.copy_to(&to[0]), copies.copy_to(&to[2])], "b's copy, with its escaped 'to', is over");
        assert_eq!(kept[1].attr("to"), Some("c@example.org/r"));
    }

    #[tokio::test]
    async fn a_request_whose_id_is_too_long_to_echo_is_refused_unhandled() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path());
        let ping = |id: &str| {
            format!("<iq xmlns='jabber:client' type='get' id='{id}' from='a@example.org/r' to='mls.example.org'><ping xmlns='urn:xmpp:ping'/></iq>")
        };
        let [ok] = <[Element; 1]>::try_from(sent(route(&service, stanza(&ping(&"i".repeat(MAX_ID)))).await.stanzas)).unwrap();
        assert_eq!(ok.attr("type"), Some("result"));
        let [refused] = <[Element; 1]>::try_from(sent(route(&service, stanza(&ping(&"i".repeat(MAX_ID + 1)))).await.stanzas)).unwrap();
        let error = StanzaError::try_from(refused.get_child("error", CLIENT).unwrap().clone()).unwrap();
        assert_eq!(error.defined_condition, C::BadRequest);
    }

    #[tokio::test]
    async fn malformed_address_is_reported_before_the_child_count() {
        let dir = tempfile::tempdir().unwrap();
        let iq = "<iq xmlns='jabber:client' type='get' id='1' from='a@example.org/r' to='no!@mls.example.org'/>";
        let [reply] = <[Element; 1]>::try_from(sent(route(&service(dir.path()), stanza(iq)).await.stanzas)).unwrap();
        let error = StanzaError::try_from(reply.get_child("error", CLIENT).unwrap().clone()).unwrap();
        assert_eq!(error.defined_condition, C::JidMalformed);
    }

    #[tokio::test]
    async fn errors_results_and_unaddressed_iqs_get_no_reply() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path());
        for xml in [
            "<iq xmlns='jabber:client' type='result' id='1' from='a@example.org/r' to='mls.example.org'/>",
            "<iq xmlns='jabber:client' type='error' id='1' from='a@example.org/r' to='mls.example.org'><error type='cancel'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
            "<message xmlns='jabber:client' type='error' from='a@example.org/r' to='mls.example.org'/>",
            "<presence xmlns='jabber:client' from='a@example.org/r' to='mls.example.org'/>",
            "<iq xmlns='jabber:client' type='get' from='a@example.org/r' to='mls.example.org'><ping xmlns='urn:xmpp:ping'/></iq>",
        ] {
            assert!(route(&service, stanza(xml)).await.stanzas.is_empty(), "{xml}");
        }
    }
}
