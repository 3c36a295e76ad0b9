//! The byte stream under a c2s session: SRV resolution (tokio-xmpp's
//! `DnsConfig`), then STARTTLS (RFC 6120 §5) or direct TLS (XEP-0368) with
//! rustls, or plain TCP when asked for explicitly.
//!
//! TLS is set up here rather than by tokio-xmpp's connectors because those
//! fix the trust roots; here a configured CA file joins the system roots
//! (`SSL_CERT_FILE` is honoured by the system-roots loader).

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use minidom::Element;
use sasl::common::ChannelBinding;
use tokio::io::{AsyncRead, AsyncWrite, BufStream};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::xmlstream::{initiate_stream, ReadError, StreamHeader, Timeouts};
use xmpp_parsers::sasl_cb;
use xmpp_parsers::stream_features::StreamFeatures;

use super::session::{ClientError, ConnectOptions};
use crate::xmpp::namespace::CLIENT;

const TLS_NS: &str = "urn:ietf:params:xml:ns:xmpp-tls";

/// Any byte stream a session can run on.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connected stream, ready for the (new) stream header.
pub struct Transport {
    pub io: Box<dyn Io>,
    /// Whether the stream is encrypted (PLAIN is offered only then).
    pub tls: bool,
    /// `tls-exporter` data (RFC 9266) for SCRAM-*-PLUS, on TLS 1.3.
    pub exporter: Option<Vec<u8>>,
}

/// Resolves the server, connects, and secures the stream as `opts` asks.
pub async fn connect(opts: &ConnectOptions) -> Result<Transport, ClientError> {
    let domain = opts.jid.domain().as_str();
    let tcp = dns_config(opts).resolve().await.map_err(io_error)?;
    tcp.set_nodelay(true)?;
    if opts.insecure_tcp {
        return Ok(Transport { io: Box::new(tcp), tls: false, exporter: None });
    }
    let config = Arc::new(tls_config(opts.ca_file.as_deref())?);
    let tcp = if opts.direct_tls { tcp } else { starttls(tcp, domain).await? };
    let name = ServerName::try_from(domain.to_owned()).map_err(|e| ClientError::Certificate(e.to_string()))?;
    let tls = TlsConnector::from(config).connect(name, tcp).await.map_err(tls_error)?;
    let exporter = exporter(tls.get_ref().1);
    Ok(Transport { io: Box::new(tls), tls: true, exporter })
}

/// The channel binding SCRAM announces (RFC 5802 §6): `tls-exporter` when
/// the server offers a -PLUS mechanism and lists that type (XEP-0440);
/// "not supported by this client" when it offers -PLUS with other types
/// only; "supported but not offered" over TLS otherwise.
pub fn channel_binding(exporter: Option<Vec<u8>>, tls: bool, features: &StreamFeatures) -> ChannelBinding {
    let plus_offered = features.sasl_mechanisms.iter().any(|m| m.ends_with("-PLUS"));
    let exporter_listed = features.sasl_cb.as_ref().is_some_and(|cb| cb.types.contains(&sasl_cb::Type::TlsExporter));
    match exporter {
        Some(data) if plus_offered && exporter_listed => ChannelBinding::TlsExporter(data),
        _ if plus_offered || !tls => ChannelBinding::None,
        _ => ChannelBinding::Unsupported,
    }
}

fn dns_config(opts: &ConnectOptions) -> DnsConfig {
    let domain = opts.jid.domain().as_str();
    match (&opts.server, opts.direct_tls) {
        (Some(addr), _) => DnsConfig::Addr { addr: addr.clone() },
        (None, true) => DnsConfig::srv(domain, "_xmpps-client._tcp", 5223),
        (None, false) => DnsConfig::srv_default_client(domain),
    }
}

fn io_error(e: tokio_xmpp::Error) -> ClientError {
    match e {
        tokio_xmpp::Error::Io(e) => ClientError::Io(e),
        other => ClientError::Io(std::io::Error::other(other.to_string())),
    }
}

/// The system roots (or `SSL_CERT_FILE`) plus the certificates of `ca_file`.
fn tls_config(ca_file: Option<&Path>) -> Result<ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_file {
        let unreadable = |e: &dyn std::fmt::Display| ClientError::Certificate(format!("CA file {}: {e}", path.display()));
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
            roots.add(cert.map_err(|e| unreadable(&e))?).map_err(|e| unreadable(&e))?;
        }
    }
    // The process default provider: `ring`, the only one this build enables.
    Ok(ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A refused certificate is its own error; any other handshake failure is I/O.
fn tls_error(e: std::io::Error) -> ClientError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(reason)) => ClientError::Certificate(format!("{reason:?}")),
        _ => ClientError::Io(e),
    }
}

fn exporter(conn: &rustls::ClientConnection) -> Option<Vec<u8>> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return None;
    }
    conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None).ok()
}

/// Opens a plaintext stream, requires a `<starttls/>` offer and asks for it;
/// returns the TCP stream once the server said `<proceed/>`.
async fn starttls(tcp: TcpStream, domain: &str) -> Result<TcpStream, ClientError> {
    let header = StreamHeader { to: Some(Cow::Borrowed(domain)), from: None, id: None };
    let pending = initiate_stream(BufStream::new(tcp), CLIENT, header, Timeouts::tight()).await?;
    let (features, mut stream) = pending
        .recv_features::<Element>()
        .await
        .map_err(|e| ClientError::Login(e.to_string()))?;
    if !features.can_starttls() {
        return Err(ClientError::NoTls);
    }
    stream.send(&Element::builder("starttls", TLS_NS).build()).await?;
    loop {
        match stream.next().await {
            Some(Ok(el)) if el.is("proceed", TLS_NS) => return Ok(stream.into_inner().into_inner()),
            Some(Ok(el)) if el.is("failure", TLS_NS) => return Err(ClientError::NoTls),
            Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) | Some(Err(ReadError::ParseError(_))) => {}
            Some(Err(ReadError::HardError(e))) => return Err(e.into()),
            Some(Err(ReadError::StreamFooterReceived)) | None => return Err(ClientError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(mechanisms: &[&str], cb: Option<sasl_cb::Type>) -> StreamFeatures {
        StreamFeatures {
            sasl_mechanisms: mechanisms.iter().map(|m| m.to_string()).collect(),
            sasl_cb: cb.map(|t| sasl_cb::SaslChannelBinding { types: vec![t] }),
            ..Default::default()
        }
    }

    #[test]
    fn channel_binding_is_tls_exporter_only_when_offered_and_listed() {
        let plus = ["SCRAM-SHA-1", "SCRAM-SHA-1-PLUS"];
        let exporter = Some(vec![7u8; 32]);
        let listed = features(&plus, Some(sasl_cb::Type::TlsExporter));
        assert_eq!(channel_binding(exporter.clone(), true, &listed), ChannelBinding::TlsExporter(vec![7u8; 32]));
        // -PLUS with another type only, or none listed (ejabberd 23.01): "n".
        let unique = features(&plus, Some(sasl_cb::Type::TlsUnique));
        assert_eq!(channel_binding(exporter.clone(), true, &unique), ChannelBinding::None);
        assert_eq!(channel_binding(exporter.clone(), true, &features(&plus, None)), ChannelBinding::None);
        // TLS 1.2 (no exporter) against a -PLUS offer: "n".
        assert_eq!(channel_binding(None, true, &listed), ChannelBinding::None);
        // No -PLUS offered over TLS: "y" (a stripped offer is detected).
        assert_eq!(channel_binding(exporter, true, &features(&["SCRAM-SHA-1"], None)), ChannelBinding::Unsupported);
        // Plain TCP: "n".
        assert_eq!(channel_binding(None, false, &features(&["SCRAM-SHA-1"], None)), ChannelBinding::None);
    }
}
