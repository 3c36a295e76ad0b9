//! A logged-in c2s session: the transport of the client library.
//!
//! One task owns the stream ([`crate::xmpp::link`]); a dispatcher task
//! matches IQ responses to their requests, answers IQs addressed to the
//! client, and queues every other stanza as an event. IQ responses never
//! wait behind unread events, so a flood of incoming messages cannot stall
//! requests (the failure mode of tokio-xmpp 6's `Client`).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use minidom::Element;
use sasl::common::Credentials;
use tokio::io::BufStream;
use tokio::sync::{mpsc, oneshot};
use tokio_xmpp::xmlstream::{
    initiate_stream, FallibleStreamElement, ReadError, StreamHeader, Timeouts, XmlStream,
};
use xmpp_parsers::jid::{BareJid, FullJid, Jid};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use super::transport;
use crate::protocol::disco::PING;
use crate::protocol::error::stanza_error;
use crate::xmpp::link::{self, Link, LinkError, StanzaNs};
use crate::xmpp::namespace::CLIENT;
use crate::xmpp::tokens::short_tokens;

const BIND_NS: &str = "urn:ietf:params:xml:ns:xmpp-bind";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the server: {0}")]
    Io(#[from] std::io::Error),
    #[error("login failed: {0}")]
    Login(String),
    #[error("the server's certificate was refused: {0}")]
    Certificate(String),
    #[error("the server did not offer TLS (use --insecure-tcp only for a loopback test server)")]
    NoTls,
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("the connection is closed")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("error reply: {}", describe(.0))]
    Stanza(Box<StanzaError>),
    #[error("malformed reply: {0}")]
    Malformed(String),
}

/// Where and as whom to log in.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub jid: BareJid,
    pub password: String,
    /// `host:port`; by default the JID's domain is resolved through SRV
    /// (`_xmpp-client._tcp`, or `_xmpps-client._tcp` for direct TLS) and,
    /// failing that, used itself on port 5222 (5223).
    pub server: Option<String>,
    /// TLS right after the TCP connect (XEP-0368) instead of STARTTLS.
    pub direct_tls: bool,
    /// PEM certificates trusted besides the system roots (or `SSL_CERT_FILE`).
    pub ca_file: Option<PathBuf>,
    /// Plain TCP without TLS: loopback test servers only. SCRAM still
    /// works; PLAIN is never used without TLS.
    pub insecure_tcp: bool,
    pub resource: Option<String>,
    /// How long [`Session::iq`] waits for an answer.
    pub iq_timeout: Duration,
}

impl ConnectOptions {
    pub fn new(jid: BareJid, password: impl Into<String>) -> Self {
        Self {
            jid,
            password: password.into(),
            server: None,
            direct_tls: false,
            ca_file: None,
            insecure_tcp: false,
            resource: None,
            iq_timeout: Duration::from_secs(30),
        }
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Element>>>>;

pub struct Session {
    jid: FullJid,
    outgoing: mpsc::Sender<Element>,
    pending: Pending,
    events: mpsc::UnboundedReceiver<Element>,
    next_id: AtomicU64,
    iq_timeout: Duration,
    link_task: tokio::task::JoinHandle<Result<(), LinkError>>,
}

impl Session {
    /// Connects (STARTTLS, direct TLS or, when asked for, plain TCP),
    /// authenticates with SASL (SCRAM-SHA-256/SHA-1, -PLUS where the TLS
    /// connection allows, PLAIN over TLS only) and binds a resource.
    pub async fn connect(opts: ConnectOptions) -> Result<Self, ClientError> {
        let (stream, jid) = login(&opts).await?;
        let domain = jid.domain().to_string();
        let counter = AtomicU64::new(0);
        let Link { outgoing, incoming, task } = link::spawn(stream, StanzaNs::Client, move || {
            ping(&format!("ka-{}", counter.fetch_add(1, Ordering::Relaxed)), &domain)
        });
        let pending: Pending = Arc::default();
        let (events_tx, events) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(incoming, outgoing.downgrade(), pending.clone(), events_tx));
        Ok(Self {
            jid,
            outgoing,
            pending,
            events,
            next_id: AtomicU64::new(0),
            iq_timeout: opts.iq_timeout,
            link_task: task,
        })
    }

    /// The bound full JID.
    pub fn jid(&self) -> &FullJid {
        &self.jid
    }

    /// Queues a stanza for sending.
    pub async fn send(&self, stanza: Element) -> Result<(), ClientError> {
        self.outgoing.send(stanza).await.map_err(|_| ClientError::Closed)
    }

    /// A fresh stanza id.
    pub fn next_id(&self) -> String {
        format!("c{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Sends an IQ get or set and returns the result's payload, if any.
    /// A request refused for the service's rate limit is sent again after
    /// the `retry-after` it names (a few times, for short waits only).
    pub async fn iq(
        &self,
        to: &Jid,
        type_: &str,
        payload: Element,
    ) -> Result<Option<Element>, ClientError> {
        let mut retries = 0;
        loop {
            let id = self.next_id();
            let iq = iq_element(type_, &id, to.as_str(), Some(payload.clone()));
            let reply = self.request(iq).await?;
            match reply.attr("type") {
                Some("result") => return Ok(reply.children().next().cloned()),
                Some("error") => {
                    let error = stanza_error_of(&reply)?;
                    match retry_after(&error) {
                        Some(wait) if retries < RATE_RETRIES && wait <= MAX_RATE_WAIT => {
                            retries += 1;
                            tokio::time::sleep(wait).await;
                        }
                        _ => return Err(ClientError::Stanza(Box::new(error))),
                    }
                }
                other => return Err(ClientError::Malformed(format!("IQ reply of type {other:?}"))),
            }
        }
    }

    /// Sends a prepared IQ (its `id` set) and returns the whole reply
    /// stanza, whatever its type.
    pub async fn request(&self, iq: Element) -> Result<Element, ClientError> {
        let id = iq.attr("id").ok_or_else(|| ClientError::Malformed("IQ without id".into()))?;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id.to_owned(), tx);
        let id = id.to_owned();
        self.send(iq).await?;
        match tokio::time::timeout(self.iq_timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                self.pending.lock().expect("pending lock").remove(&id);
                Err(ClientError::Timeout(self.iq_timeout))
            }
        }
    }

    /// The next stanza that is not an IQ response, or `None` once closed.
    pub async fn next_event(&mut self) -> Option<Element> {
        self.events.recv().await
    }

    /// An event already received, without waiting.
    pub fn try_next_event(&mut self) -> Option<Element> {
        self.events.try_recv().ok()
    }

    /// Like [`Self::next_event`] but gives up after `timeout`.
    pub async fn next_event_within(&mut self, timeout: Duration) -> Option<Element> {
        tokio::time::timeout(timeout, self.events.recv()).await.ok().flatten()
    }

    /// Closes the stream politely and waits for the connection to end.
    pub async fn close(self) {
        let Session { outgoing, link_task, .. } = self;
        drop(outgoing); // the last strong sender: the link closes the stream
        let _ = tokio::time::timeout(Duration::from_secs(5), link_task).await;
    }
}

async fn dispatch(
    mut incoming: mpsc::Receiver<Element>,
    outgoing: mpsc::WeakSender<Element>,
    pending: Pending,
    events: mpsc::UnboundedSender<Element>,
) {
    while let Some(stanza) = incoming.recv().await {
        if stanza.name() != "iq" {
            let _ = events.send(stanza);
            continue;
        }
        match stanza.attr("type") {
            Some("result") | Some("error") => {
                let waiter = stanza.attr("id").and_then(|id| pending.lock().expect("lock").remove(id));
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(stanza);
                    }
                    // Nobody asked (or the request timed out): surface it.
                    None => {
                        let _ = events.send(stanza);
                    }
                }
            }
            _ => {
                // Weak: a closing session must not be kept open by us.
                let (Some(reply), Some(out)) = (answer_iq(&stanza), outgoing.upgrade()) else {
                    continue;
                };
                if out.send(reply).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Answers pings; refuses every other request (RFC 6120 §8.2.3).
fn answer_iq(iq: &Element) -> Option<Element> {
    let id = iq.attr("id")?;
    let to = iq.attr("from").unwrap_or_default();
    if iq.children().any(|c| c.is("ping", PING)) {
        return Some(iq_element("result", id, to, None));
    }
    let mut reply = iq_element("error", id, to, None);
    reply.append_child(stanza_error(ErrorType::Cancel, DefinedCondition::ServiceUnavailable, None, None).into());
    Some(reply)
}

/// How often, and for how long at most, [`Session::iq`] waits out a rate limit.
const RATE_RETRIES: usize = 5;
const MAX_RATE_WAIT: Duration = Duration::from_secs(10);

/// The wait a `<rate-limited/>` error asks for.
fn retry_after(error: &StanzaError) -> Option<Duration> {
    let limited = error.other.as_ref().filter(|o| o.is("rate-limited", crate::protocol::NS_ERRORS))?;
    limited.attr("retry-after")?.parse().ok().map(Duration::from_secs)
}

fn stanza_error_of(reply: &Element) -> Result<StanzaError, ClientError> {
    let el = reply
        .get_child("error", CLIENT)
        .ok_or_else(|| ClientError::Malformed("error reply without <error/>".into()))?;
    StanzaError::try_from(el.clone()).map_err(|e| ClientError::Malformed(e.to_string()))
}

/// `<iq type to id>payload</iq>`; an empty `to` is left out.
pub fn iq_element(type_: &str, id: &str, to: &str, payload: Option<Element>) -> Element {
    let mut b = Element::builder("iq", CLIENT)
        .attr("type".try_into().expect("ncname"), type_)
        .attr("id".try_into().expect("ncname"), id);
    if !to.is_empty() {
        b = b.attr("to".try_into().expect("ncname"), to);
    }
    if let Some(p) = payload {
        b = b.append(p);
    }
    b.build()
}

fn ping(id: &str, to: &str) -> Element {
    iq_element("get", id, to, Some(Element::builder("ping", PING).build()))
}

async fn login(opts: &ConnectOptions) -> Result<(link::Stream, FullJid), ClientError> {
    let domain = opts.jid.domain().to_string();
    let transport = transport::connect(opts).await?;
    let timeouts = Timeouts::tight();
    let header = || StreamHeader { to: Some(Cow::Owned(domain.clone())), from: None, id: None };
    let io = BufStream::new(short_tokens(transport.io));
    let pending = initiate_stream(io, CLIENT, header(), timeouts).await?;
    let (features, stream) = pending
        .recv_features::<FallibleStreamElement>()
        .await
        .map_err(|e| ClientError::Login(e.to_string()))?;
    let binding = transport::channel_binding(transport.exporter, transport.tls, &features);
    let mut mechanisms: BTreeSet<String> = features.sasl_mechanisms;
    if !transport.tls {
        mechanisms.remove("PLAIN");
    }
    let username = opts.jid.node().map(|n| n.to_string()).unwrap_or_default();
    let creds = Credentials::default()
        .with_username(username)
        .with_password(opts.password.clone())
        .with_channel_binding(binding);
    let stream = tokio_xmpp::client_login(stream, mechanisms, creds).await.map_err(|e| match e {
        tokio_xmpp::Error::Auth(e) => ClientError::Auth(e.to_string()),
        e => ClientError::Login(e.to_string()),
    })?;
    let pending = stream.send_header(header()).await?;
    let (_, mut stream) = pending
        .recv_features::<Element>()
        .await
        .map_err(|e| ClientError::Login(e.to_string()))?;
    let jid = bind(&mut stream, opts.resource.as_deref()).await?;
    Ok((stream.box_stream(), jid))
}

async fn bind<Io>(stream: &mut XmlStream<Io, Element>, resource: Option<&str>) -> Result<FullJid, ClientError>
where
    Io: tokio::io::AsyncBufRead + tokio::io::AsyncWrite + Unpin,
{
    let mut bind = Element::builder("bind", BIND_NS);
    if let Some(r) = resource {
        bind = bind.append(Element::builder("resource", BIND_NS).append(r).build());
    }
    stream.send(&iq_element("set", "bind", "", Some(bind.build()))).await?;
    loop {
        match stream.next().await {
            Some(Ok(el)) if el.is("iq", CLIENT) && el.attr("id") == Some("bind") => {
                let jid = el
                    .get_child("bind", BIND_NS)
                    .and_then(|b| b.get_child("jid", BIND_NS))
                    .map(|j| j.text())
                    .ok_or_else(|| ClientError::Login("resource binding refused".into()))?;
                return FullJid::new(&jid).map_err(|e| ClientError::Login(e.to_string()));
            }
            Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) | Some(Err(ReadError::ParseError(_))) => {}
            Some(Err(ReadError::HardError(e))) => return Err(e.into()),
            Some(Err(ReadError::StreamFooterReceived)) | None => return Err(ClientError::Closed),
        }
    }
}

/// `type/condition (application-condition): text`, for people.
pub fn describe(e: &StanzaError) -> String {
    let condition = Element::from(e.defined_condition.clone()).name().to_owned();
    let type_ = format!("{:?}", e.type_).to_lowercase();
    let mut out = format!("{type_}/{condition}");
    if let Some(app) = &e.other {
        out.push_str(&format!(" ({})", app.name()));
    }
    if let Some(text) = e.texts.values().next().filter(|t| !t.is_empty()) {
        out.push_str(&format!(": {text}"));
    }
    out
}
