//! The content of an application message (xep/ §Message Content): the MLS
//! application data is a XEP-0420 `<envelope xmlns='urn:xmpp:sce:1'>` in
//! UTF-8, whose `<content/>` holds ordinary stanza children (`<body/>`,
//! replies, reactions...) and whose `<from/>` a receiver checks against
//! the MLS sender's credential. Sans-IO: bytes in, bytes out.

use minidom::Element;
use rand::distr::{Alphanumeric, SampleString};
use xmpp_parsers::jid::BareJid;

use super::{format_time, n, parse_time};
use crate::xmpp::namespace::CLIENT;

/// XEP-0420 Stanza Content Encryption.
pub const NS_SCE: &str = "urn:xmpp:sce:1";
/// XEP-0380 Explicit Message Encryption.
pub const NS_EME: &str = "urn:xmpp:eme:0";
/// A sealed envelope is padded to a multiple of this many octets.
pub const PAD_BLOCK: usize = 256;
/// What an `<rpad/>` adds to an envelope besides its text.
const RPAD_TAGS: &str = "<rpad></rpad>";

/// Why a receiver refuses the application data of a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("not a UTF-8 XML <envelope xmlns='urn:xmpp:sce:1'/>")]
    NotAnEnvelope,
    #[error("the envelope has no {0}")]
    Missing(&'static str),
    #[error("invalid XEP-0082 time in <time/>")]
    BadTime,
    #[error("the envelope's <from/> is not a bare JID")]
    BadFrom,
    #[error("the envelope's <from/> names {claimed}, not the MLS sender {sender}")]
    WrongSender { claimed: String, sender: BareJid },
}

/// The children of `<content/>`: what the message says, as stanza elements.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Content(pub Vec<Element>);

impl Content {
    /// A message of one `<body xmlns='jabber:client'/>`.
    pub fn from_body(text: &str) -> Self {
        Content(vec![Element::builder("body", CLIENT).append(text).build()])
    }

    /// The text of the first `<body xmlns='jabber:client'/>`, if any.
    pub fn body(&self) -> Option<String> {
        self.0.iter().find(|e| e.is("body", CLIENT)).map(Element::text)
    }
}

/// An opened envelope: its content and the affixes a receiver uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub content: Content,
    /// The sender's bare JID, as the envelope's `<from jid/>` names it.
    pub from: BareJid,
    /// `<time stamp/>`, in seconds since the Unix epoch.
    pub time: i64,
}

impl Envelope {
    /// The application data to encrypt: the envelope in UTF-8, padded
    /// with random `<rpad/>` text to a multiple of [`PAD_BLOCK`] octets.
    pub fn seal(&self) -> Vec<u8> {
        let unpadded = String::from(&self.element(None)).len();
        let pad = Alphanumeric.sample_string(&mut rand::rng(), pad_length(unpadded + RPAD_TAGS.len()));
        String::from(&self.element(Some(pad))).into_bytes()
    }

    fn element(&self, rpad: Option<String>) -> Element {
        let content = Element::builder("content", NS_SCE).append_all(self.content.0.iter().cloned()).build();
        let rpad = rpad.map(|text| Element::builder("rpad", NS_SCE).append(text).build());
        Element::builder("envelope", NS_SCE)
            .append(content)
            .append_all(rpad)
            .append(Element::builder("time", NS_SCE).attr(n("stamp"), format_time(self.time)).build())
            .append(Element::builder("from", NS_SCE).attr(n("jid"), self.from.as_str()).build())
            .build()
    }

    /// Parses application data; affixes other than `<content/>`, `<time/>`
    /// and `<from/>` are ignored (`<rpad/>`, `<to/>`, extensions).
    pub fn parse(data: &[u8]) -> Result<Self, ContentError> {
        let text = std::str::from_utf8(data).map_err(|_| ContentError::NotAnEnvelope)?;
        let el: Element = text.parse().map_err(|_| ContentError::NotAnEnvelope)?;
        if !el.is("envelope", NS_SCE) {
            return Err(ContentError::NotAnEnvelope);
        }
        let content = el.get_child("content", NS_SCE).ok_or(ContentError::Missing("<content/>"))?;
        let stamp = el.get_child("time", NS_SCE).and_then(|t| t.attr("stamp")).ok_or(ContentError::Missing("<time stamp/>"))?;
        let from = el.get_child("from", NS_SCE).and_then(|f| f.attr("jid")).ok_or(ContentError::Missing("<from jid/>"))?;
        Ok(Envelope {
            content: Content(content.children().cloned().collect()),
            from: BareJid::new(from).map_err(|_| ContentError::BadFrom)?,
            time: parse_time(stamp).map_err(|_| ContentError::BadTime)?,
        })
    }

    /// Parses application data that MLS authenticated as `sender`'s and
    /// refuses an envelope whose `<from/>` names anyone else.
    pub fn open(data: &[u8], sender: &BareJid) -> Result<Self, ContentError> {
        let envelope = Self::parse(data)?;
        if &envelope.from != sender {
            return Err(ContentError::WrongSender { claimed: envelope.from.to_string(), sender: sender.clone() });
        }
        Ok(envelope)
    }
}

/// Characters of `<rpad/>` text for an envelope of `len` octets without
/// them: 1 to [`PAD_BLOCK`], so that the envelope is a multiple of it.
pub fn pad_length(len: usize) -> usize {
    PAD_BLOCK - len % PAD_BLOCK
}

/// The XEP-0380 hint on the outer `<message/>` of an application message.
pub fn encryption_hint() -> Element {
    Element::builder("encryption", NS_EME).attr(n("namespace"), super::NS).attr(n("name"), "MLS").build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> BareJid {
        BareJid::new("alice@example.org").unwrap()
    }

    fn reply() -> Element {
        "<reply xmlns='urn:xmpp:reply:0' to='bob@example.org' id='t3vw6mzq2kfy7hxd4jcn5rab'/>".parse().unwrap()
    }

    #[test]
    fn seals_and_opens_content_unchanged() {
        let content = Content(vec![Content::from_body("hi <bob> & all").0.remove(0), reply()]);
        let env = Envelope { content: content.clone(), from: alice(), time: 1_800_000_000 };
        let data = env.seal();
        let opened = Envelope::open(&data, &alice()).unwrap();
        assert_eq!(opened, env);
        assert_eq!(opened.content.body().as_deref(), Some("hi <bob> & all"));
        assert_eq!(opened.content.0[1], reply());
        let text = String::from_utf8(data).unwrap();
        assert!(text.starts_with("<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>hi &lt;bob&gt; &amp; all</body>"), "{text}");
        assert!(text.ends_with("</rpad><time stamp='2027-01-15T08:00:00Z'/><from jid='alice@example.org'/></envelope>"), "{text}");
    }

    #[test]
    fn padding_hides_the_length_of_short_bodies() {
        assert_eq!(pad_length(0), 256);
        assert_eq!(pad_length(255), 1);
        assert_eq!(pad_length(256), 256);
        assert_eq!(pad_length(300), 212);
        let sealed = |body: &str| Envelope { content: Content::from_body(body), from: alice(), time: 0 }.seal();
        let (short, longer) = (sealed("ok"), sealed(&"x".repeat(70)));
        assert_eq!(short.len(), PAD_BLOCK);
        assert_eq!(longer.len(), PAD_BLOCK, "bodies of 2 and 70 characters give envelopes of one length");
        assert_ne!(sealed("ok"), short, "the padding is random");
        assert_eq!(sealed(&"x".repeat(300)).len(), 2 * PAD_BLOCK);
        assert_eq!(sealed(&"x".repeat(320)).len() % PAD_BLOCK, 0);
    }

    #[test]
    fn refuses_another_sender_and_malformed_envelopes() {
        let data = Envelope { content: Content::from_body("I am bob"), from: alice(), time: 0 }.seal();
        let bob = BareJid::new("bob@example.org").unwrap();
        assert_eq!(
            Envelope::open(&data, &bob),
            Err(ContentError::WrongSender { claimed: "alice@example.org".into(), sender: bob.clone() })
        );
        let cases: [(&[u8], ContentError); 6] = [
            (b"hello", ContentError::NotAnEnvelope),
            (&[0xff, 0xfe], ContentError::NotAnEnvelope),
            (b"<envelope xmlns='urn:xmpp:sce:0'/>", ContentError::NotAnEnvelope),
            (b"<envelope xmlns='urn:xmpp:sce:1'><time stamp='2027-01-15T08:00:00Z'/><from jid='bob@example.org'/></envelope>", ContentError::Missing("<content/>")),
            (b"<envelope xmlns='urn:xmpp:sce:1'><content/><from jid='bob@example.org'/></envelope>", ContentError::Missing("<time stamp/>")),
            (b"<envelope xmlns='urn:xmpp:sce:1'><content/><time stamp='2027-01-15T08:00:00Z'/></envelope>", ContentError::Missing("<from jid/>")),
        ];
        for (data, error) in cases {
            assert_eq!(Envelope::open(data, &bob), Err(error), "{}", String::from_utf8_lossy(data));
        }
        let full = b"<envelope xmlns='urn:xmpp:sce:1'><content/><time stamp='2027-01-15T08:00:00Z'/><from jid='bob@example.org/phone'/></envelope>";
        assert_eq!(Envelope::open(full, &bob), Err(ContentError::BadFrom), "a full JID is not a bare JID");
    }

    #[test]
    fn hint_is_xep_0380() {
        assert_eq!(
            String::from(&encryption_hint()),
            "<encryption xmlns='urn:xmpp:eme:0' name='MLS' namespace='urn:xmpp:mls:0'/>"
        );
    }
}
