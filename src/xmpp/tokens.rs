//! Read-side adapter that shortens over-long XML names and attribute values.
//!
//! tokio-xmpp parses with rxml's default options, which refuse a name or
//! an attribute value longer than 8192 octets as an XML error: the whole
//! stream dies, with every stanza in flight. XMPP servers have no such
//! limit and forward such stanzas, so one stanza from any account (an IQ
//! with a long 'id', a MAM query with a long 'queryid') closed the
//! component's stream, and any contact could close a client's. This
//! adapter replaces each name or attribute value longer than [`MAX_TOKEN`]
//! octets with a stand-in of exactly [`MAX_TOKEN`] octets: letters and a
//! keyed hash of the original, so that distinct names stay distinct (no
//! duplicate attribute, end tags still match) and no stand-in equals a
//! value that the protocol accepts (every attribute it accepts is shorter:
//! JIDs at most 3071 octets, ids at most [`crate::protocol::MAX_ID`]).
//! Text is untouched: the parser reads it in pieces.
//!
//! It reads the XML itself, so it sits directly on the plaintext stream
//! (above TLS, once there is TLS). Servers re-serialise every stanza they route, so no comment, CDATA
//! section or processing instruction reaches a stream: markup opened with
//! `<!` or `<?` is passed through up to its first `>`.

use std::hash::{BuildHasher, Hasher};
use std::io;

use super::rewrite::{Rewrite, Rewriter};

/// Longest name or attribute value passed on as it is; the stand-in of a
/// longer one has exactly this length (rxml refuses more than 8192).
pub const MAX_TOKEN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Text,
    /// Just after `<`.
    Open,
    /// `<!…>` or `<?…>`.
    Markup,
    /// An element name (start or end tag) or an attribute name.
    Name,
    /// Inside a tag, between names and values.
    Tag,
    /// An attribute value, with its quote.
    Value(u8),
}

/// The streaming scanner: bytes in, the same bytes out but for over-long
/// tokens.
pub struct Scanner {
    state: State,
    /// The current token, while it is at most [`MAX_TOKEN`] octets.
    token: Vec<u8>,
    /// The hash of the current token once it is longer.
    long: Option<std::hash::DefaultHasher>,
    keys: std::hash::RandomState,
}

impl Scanner {
    fn new() -> Self {
        Self { state: State::Text, token: Vec::new(), long: None, keys: std::hash::RandomState::new() }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Text => {
                out.push(b);
                if b == b'<' {
                    self.state = State::Open;
                }
            }
            State::Open => match b {
                b'/' => {
                    out.push(b);
                    self.state = State::Name;
                }
                b'!' | b'?' => {
                    out.push(b);
                    self.state = State::Markup;
                }
                _ => {
                    self.state = State::Name;
                    self.collect(b);
                }
            },
            State::Markup => {
                out.push(b);
                if b == b'>' {
                    self.state = State::Text;
                }
            }
            State::Name if b.is_ascii_whitespace() || matches!(b, b'/' | b'>' | b'=') => {
                self.finish(out);
                self.tag(b, out);
            }
            State::Name => self.collect(b),
            State::Tag => self.tag(b, out),
            State::Value(quote) if b == quote => {
                self.finish(out);
                out.push(b);
                self.state = State::Tag;
            }
            State::Value(_) => self.collect(b),
        }
    }

    fn tag(&mut self, b: u8, out: &mut Vec<u8>) {
        self.state = match b {
            b'>' => State::Text,
            b'\'' | b'"' => State::Value(b),
            b'/' | b'=' => State::Tag,
            _ if b.is_ascii_whitespace() => State::Tag,
            _ => {
                self.state = State::Name;
                return self.collect(b);
            }
        };
        out.push(b);
    }

    fn collect(&mut self, b: u8) {
        if let Some(hasher) = &mut self.long {
            hasher.write_u8(b);
            return;
        }
        self.token.push(b);
        if self.token.len() > MAX_TOKEN {
            let mut hasher = self.keys.build_hasher();
            hasher.write(&self.token);
            self.token.clear();
            self.long = Some(hasher);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        match self.long.take() {
            Some(hasher) => out.extend_from_slice(&stand_in(hasher.finish())),
            None => out.append(&mut self.token),
        }
    }
}

/// [`MAX_TOKEN`] octets: valid as a name and as an attribute value.
fn stand_in(hash: u64) -> Vec<u8> {
    let mut s = "x".repeat(MAX_TOKEN - 16).into_bytes();
    s.extend_from_slice(format!("{hash:016x}").as_bytes());
    s
}

/// `inner` whose names and attribute values are at most [`MAX_TOKEN`]
/// octets; writes pass through.
pub fn short_tokens<Io>(inner: Io) -> Rewrite<Io, Scanner> {
    Rewrite::new(inner, Scanner::new())
}

impl Rewriter for Scanner {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        for &b in input {
            self.byte(b, out);
        }
        Ok(())
    }

    /// A token cut off by the end of the stream is not well-formed anyway.
    fn end(&mut self, _out: &mut Vec<u8>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Vec<u8> {
        let mut scanner = Scanner::new();
        let mut out = Vec::new();
        for chunk in chunks {
            scanner.feed(chunk, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn short_tokens_and_text_pass_unchanged() {
        let xml = b"<?xml version='1.0'?><iq id=\"a>b\" to='x'><q xmlns='urn:x' a = 'v'/>text &amp; more<![CDATA[x]]></iq>";
        assert_eq!(scan(&[xml]), xml.to_vec());
        let text = format!("<m>{}</m>", "t".repeat(3 * MAX_TOKEN));
        assert_eq!(scan(&[text.as_bytes()]), text.into_bytes());
    }

    #[test]
    fn long_values_and_names_become_stand_ins_that_parse() {
        let (long_a, long_b) = ("a".repeat(9000), format!("{}b", "a".repeat(8999)));
        let xml = format!(
            "<iq id='{long_a}' {long_a}='1' {long_b}='2'><{long_a} xmlns='urn:x'/><e>{long_b}</e></iq>"
        );
        // Split inside the long tokens: the scanner keeps its state.
        let (head, tail) = xml.as_bytes().split_at(5000);
        let out = String::from_utf8(scan(&[head, tail])).unwrap();
        let el: minidom::Element = out.replace("<iq ", "<iq xmlns='jabber:client' ").parse().unwrap();
        let id = el.attr("id").unwrap();
        assert_eq!(id.len(), MAX_TOKEN);
        let names: Vec<_> = el.attrs().into_iter().map(|((_, k), _)| k.to_string()).filter(|k| k.len() == MAX_TOKEN).collect();
        assert_eq!(names.len(), 2, "two distinct long names stay distinct");
        assert_ne!(names[0], names[1]);
        assert_eq!(el.children().next().unwrap().name().len(), MAX_TOKEN);
        assert_eq!(el.children().nth(1).unwrap().text(), long_b, "text is untouched");
    }
}
