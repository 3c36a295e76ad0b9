//! A logged-in c2s session: the tokio driver of the client's [`Port`].
//!
//! One task owns the stream ([`crate::xmpp::link`]); the driver task
//! answers IQs addressed to the client and hands every other stanza to the
//! port, which matches IQ responses to their requests by id and queues the
//! rest as events. IQ responses never wait behind unread events, so a
//! flood of incoming messages cannot stall requests (the failure mode of
//! tokio-xmpp 6's `Client`).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use minidom::Element;
use sasl::common::Credentials;
use tokio::io::BufStream;
use tokio::sync::mpsc;
use tokio_xmpp::xmlstream::{
    initiate_stream, FallibleStreamElement, ReadError, StreamHeader, Timeouts, XmlStream,
};
use xmpp_parsers::jid::{BareJid, FullJid};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use super::port::Port;
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

/// A logged-in session: the tokio driver of a [`Port`]. One task moves
/// stanzas between the stream and the port and tells it the time; the
/// session dereferences to its port, whose requests and events it serves.
pub struct Session {
    port: Port,
    driver: tokio::task::JoinHandle<()>,
    link_task: Option<tokio::task::JoinHandle<Result<(), LinkError>>>,
}

impl std::ops::Deref for Session {
    type Target = Port;
    fn deref(&self) -> &Port {
        &self.port
    }
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
        let port = Port::new(jid, opts.iq_timeout);
        let driver = tokio::spawn(drive(port.clone(), incoming, outgoing));
        Ok(Self { port, driver, link_task: Some(task) })
    }

    /// The port this session drives (for a client core).
    pub fn port(&self) -> &Port {
        &self.port
    }

    /// Closes the stream politely and waits for the connection to end.
    pub async fn close(mut self) {
        self.port.close();
        let link_task = self.link_task.take();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.driver).await;
        if let Some(task) = link_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.port.close();
    }
}

/// Moves stanzas between the stream and the port until either ends:
/// answers IQ requests addressed to the client itself, sends what the port
/// queued, and ticks it at its deadlines. When the port closes, the last
/// stanzas go out and dropping `outgoing` closes the stream.
async fn drive(port: Port, mut incoming: mpsc::Receiver<Element>, outgoing: mpsc::Sender<Element>) {
    loop {
        while let Some(stanza) = port.poll_transmit() {
            if outgoing.send(stanza).await.is_err() {
                return port.close();
            }
        }
        if port.is_closed() {
            return;
        }
        let deadline = port.next_deadline().map(tokio::time::Instant::from_std);
        let sleep = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            stanza = incoming.recv() => match stanza {
                Some(stanza) if is_request(&stanza) => {
                    if let Some(reply) = answer_iq(&stanza) {
                        let _ = outgoing.send(reply).await;
                    }
                }
                Some(stanza) => port.receive(stanza),
                None => return port.close(),
            },
            () = sleep => port.tick(std::time::Instant::now()),
            () = port.attention() => {}
        }
    }
}

fn is_request(stanza: &Element) -> bool {
    stanza.name() == "iq" && matches!(stanza.attr("type"), Some("get") | Some("set"))
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
