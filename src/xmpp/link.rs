//! One task owns an XML stream: it writes what the application queues and
//! reads what the peer sends, never both at once.
//!
//! tokio-xmpp's `Client` can stall for good when a send and a receive
//! contend; here the stream is only ever touched by this task, reads are
//! cancel-safe (the parser state lives in the stream), and a stanza waiting
//! for a full inbound queue never blocks outbound traffic.

use futures::{SinkExt, StreamExt};
use minidom::Element;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_xmpp::connect::AsyncReadAndWrite;
use tokio_xmpp::xmlstream::{ReadError, XmlStream};
use xso::FromXml;

use super::bounded::Bounded;
use super::namespace;

/// A stream of elements of type `T`: [`Bounded`] where the peer is not
/// trusted (the component reads stanzas of every client and server).
pub type Stream<T = Element> = XmlStream<Box<dyn AsyncReadAndWrite + Send + 'static>, T>;

const STREAM_NS: &str = "http://etherx.jabber.org/streams";
const QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("stream error from peer: {0}")]
    StreamError(String),
    #[error("stream closed by peer")]
    Closed,
}

/// The application's side of a running stream.
pub struct Link {
    pub outgoing: mpsc::Sender<Element>,
    pub incoming: mpsc::Receiver<Element>,
    pub task: JoinHandle<Result<(), LinkError>>,
}

/// How stanzas are namespaced on this stream.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum StanzaNs {
    Client,
    Component,
}

/// Starts the task. `keepalive` builds the element sent when the stream has
/// been silent for the read timeout (a XEP-0199 ping): any answer resets the
/// peer-silence timer, so the stream survives idle periods.
pub fn spawn<T>(stream: Stream<T>, ns: StanzaNs, keepalive: impl Fn() -> Element + Send + 'static) -> Link
where
    T: FromXml + Into<Element> + std::fmt::Debug + Send + 'static,
    T::Builder: Send,
{
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let task = tokio::spawn(drive(stream, ns, out_rx, in_tx, keepalive));
    Link { outgoing: out_tx, incoming: in_rx, task }
}

enum Event<T> {
    Send(Option<Element>),
    Read(Option<Result<T, ReadError>>),
    Delivered,
}

async fn drive<T: FromXml + Into<Element> + std::fmt::Debug>(
    mut stream: Stream<T>,
    ns: StanzaNs,
    mut out_rx: mpsc::Receiver<Element>,
    in_tx: mpsc::Sender<Element>,
    keepalive: impl Fn() -> Element,
) -> Result<(), LinkError> {
    let mut undelivered: Option<Element> = None;
    loop {
        let event = match undelivered.take() {
            Some(el) => tokio::select! {
                permit = in_tx.reserve() => match permit {
                    Ok(p) => { p.send(el); Event::Delivered }
                    Err(_) => return Ok(()), // application gone
                },
                out = out_rx.recv() => { undelivered = Some(el); Event::Send(out) }
            },
            None => tokio::select! {
                out = out_rx.recv() => Event::Send(out),
                read = stream.next() => Event::Read(read),
            },
        };
        match event {
            Event::Delivered => {}
            Event::Send(Some(el)) => send(&mut stream, ns, el).await?,
            Event::Send(None) => {
                // Every sender dropped: close the stream politely.
                let _ = stream.shutdown().await;
                return Ok(());
            }
            Event::Read(Some(Ok(el))) => undelivered = Some(inbound(el.into(), ns)?),
            Event::Read(Some(Err(ReadError::SoftTimeout))) => {
                send(&mut stream, ns, keepalive()).await?
            }
            Event::Read(Some(Err(ReadError::ParseError(e)))) => {
                tracing::warn!(error = %e, "unparsable element from peer skipped");
            }
            Event::Read(Some(Err(ReadError::HardError(e)))) => return Err(e.into()),
            Event::Read(Some(Err(ReadError::StreamFooterReceived))) | Event::Read(None) => {
                return Err(LinkError::Closed)
            }
        }
    }
}

async fn send<T: FromXml>(stream: &mut Stream<T>, ns: StanzaNs, el: Element) -> Result<(), LinkError> {
    let el = match ns {
        StanzaNs::Component => namespace::rename(el, namespace::CLIENT, namespace::COMPONENT),
        StanzaNs::Client => el,
    };
    stream.send(&el).await?;
    Ok(())
}

fn inbound(el: Element, ns: StanzaNs) -> Result<Element, LinkError> {
    if el.is("error", STREAM_NS) {
        return Err(LinkError::StreamError(stream_error_condition(&el)));
    }
    Ok(match ns {
        StanzaNs::Component => namespace::rename(el, namespace::COMPONENT, namespace::CLIENT),
        StanzaNs::Client => el,
    })
}

impl From<Bounded> for Element {
    fn from(stanza: Bounded) -> Element {
        stanza.0
    }
}

/// The defined condition of a `<stream:error/>`, e.g. `not-authorized`.
pub fn stream_error_condition(el: &Element) -> String {
    el.children()
        .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-streams" && c.name() != "text")
        .map(|c| c.name().to_owned())
        .unwrap_or_else(|| "undefined-condition".to_owned())
}
