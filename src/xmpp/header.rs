//! Read-side adapter that adds `version='1.0'` to the peer's stream header.
//!
//! XEP-0114 servers (Prosody among them) send a component stream header
//! without `version`, which tokio-xmpp rejects unless its `component` feature
//! is on — and that feature breaks c2s clients in the same build. This
//! adapter patches only the first start tag (which may arrive split across
//! reads) and is transparent afterwards.

use std::io;

use super::rewrite::{Rewrite, Rewriter};

/// A stream header larger than this is refused rather than buffered.
const MAX_HEADER: usize = 8 * 1024;

/// `inner` whose first start tag gets `version='1.0'` if it has none.
pub fn header_patch<Io>(inner: Io) -> Rewrite<Io, VersionPatch> {
    Rewrite::new(inner, VersionPatch::default())
}

#[derive(Default)]
pub struct VersionPatch {
    /// Bytes read while looking for the end of the header.
    pending: Vec<u8>,
    done: bool,
}

impl Rewriter for VersionPatch {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        if self.done {
            out.extend_from_slice(input);
            return Ok(());
        }
        self.pending.extend_from_slice(input);
        if let Some(patched) = patch_header(&self.pending) {
            out.extend_from_slice(&patched);
            self.pending = Vec::new();
            self.done = true;
        } else if self.pending.len() > MAX_HEADER {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "stream header too large"));
        }
        Ok(())
    }

    /// The peer closed before a complete header: hand over what there is.
    fn end(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.pending);
    }
}

/// Returns the patched bytes once `buf` holds the whole `<stream:stream …>` tag.
fn patch_header(buf: &[u8]) -> Option<Vec<u8>> {
    let mut i = 0;
    let start = loop {
        let at = i + buf[i..].iter().position(|&b| b == b'<')?;
        match buf.get(at + 1) {
            None => return None,
            Some(b'?') | Some(b'!') => i = at + 1,
            Some(_) => break at,
        }
    };
    let end = start + buf[start..].iter().position(|&b| b == b'>')?;
    let tag = &buf[start..end];
    let has_version = tag.windows(8).any(|w| w == b"version=");
    let mut out = Vec::with_capacity(buf.len() + 16);
    out.extend_from_slice(&buf[..end]);
    if !has_version {
        out.extend_from_slice(b" version='1.0'");
    }
    out.extend_from_slice(&buf[end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const PROSODY: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:component:accept' id='abc' from='mls.localhost'><handshake/>";

    #[test]
    fn adds_version_when_missing() {
        let out = patch_header(PROSODY).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("from='mls.localhost' version='1.0'><handshake/>"), "{s}");
    }

    #[test]
    fn keeps_existing_version_and_waits_for_whole_tag() {
        let h = b"<stream:stream version='1.0' id='x'>";
        assert_eq!(patch_header(h).unwrap(), h.to_vec());
        assert_eq!(patch_header(b"<?xml version='1.0'?><stream:str"), None);
    }

    #[tokio::test]
    async fn header_split_across_reads() {
        let (client, mut server) = tokio::io::duplex(8);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in PROSODY.chunks(7) {
                server.write_all(chunk).await.unwrap();
            }
        });
        let mut patched = header_patch(client);
        let mut out = Vec::new();
        let mut buf = [0u8; 5];
        while out.len() < PROSODY.len() + 14 {
            let n = patched.read(&mut buf).await.unwrap();
            assert!(n > 0);
            out.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert_eq!(out, patch_header(PROSODY).unwrap());
    }
}
