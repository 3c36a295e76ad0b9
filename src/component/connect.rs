//! Opening a XEP-0114 stream and authenticating with the shared secret.

use std::borrow::Cow;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio_xmpp::xmlstream::{initiate_stream, ReadError, StreamHeader, Timeouts, XmlStream};
use xmpp_parsers::component::Handshake;

use crate::config::Config;
use crate::xmpp::bounded::Bounded;
use crate::xmpp::header::header_patch;
use crate::xmpp::link::{stream_error_condition, Stream};
use crate::xmpp::namespace::COMPONENT;
use crate::xmpp::tokens::short_tokens;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach the server: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The server refused the stream, e.g. `not-authorized` (wrong secret)
    /// or `conflict` (another instance holds the domain).
    #[error("the server refused the component: {0}")]
    Refused(String),
    #[error("protocol error during the handshake: {0}")]
    Protocol(String),
}

impl ConnectError {
    /// A wrong secret will not fix itself: stop instead of retrying.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ConnectError::Refused(c) if c == "not-authorized")
    }
}

pub async fn connect(config: &Config) -> Result<Stream<Bounded>, ConnectError> {
    let c = &config.component;
    let tcp = TcpStream::connect(config.server_addr().await?).await?;
    tcp.set_nodelay(true)?;
    let timeouts = Timeouts {
        read_timeout: Duration::from_secs(c.keepalive_secs),
        response_timeout: Duration::from_secs(c.response_timeout_secs),
    };
    let header = StreamHeader { to: Some(Cow::Borrowed(&c.jid)), from: None, id: None };
    let io = BufStream::new(header_patch(short_tokens(tcp)));
    let mut pending = initiate_stream(io, COMPONENT, header, timeouts).await?;
    let stream_id = pending
        .take_header()
        .id
        .ok_or_else(|| ConnectError::Protocol("stream header without id".into()))?;
    let mut stream: XmlStream<_, Bounded> = pending.skip_features();
    stream.send(&Handshake::from_stream_id_and_password(stream_id.into_owned(), &c.secret)).await?;
    loop {
        match stream.next().await {
            Some(Ok(Bounded(el))) if el.name() == "handshake" => return Ok(stream.box_stream()),
            Some(Ok(Bounded(el))) if el.name() == "error" => {
                return Err(ConnectError::Refused(stream_error_condition(&el)))
            }
            Some(Ok(Bounded(el))) => {
                return Err(ConnectError::Protocol(format!("unexpected <{}/>", el.name())))
            }
            Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Err(ReadError::HardError(e))) => return Err(e.into()),
            Some(Err(e)) => return Err(ConnectError::Protocol(e.to_string())),
            None => return Err(ConnectError::Protocol("stream closed".into())),
        }
    }
}
