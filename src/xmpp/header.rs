//! Read-side adapter that adds `version='1.0'` to the peer's stream header.
//!
//! XEP-0114 servers (Prosody among them) send a component stream header
//! without `version`, which tokio-xmpp rejects unless its `component` feature
//! is on — and that feature breaks c2s clients in the same build. This
//! adapter patches only the first start tag (which may arrive split across
//! reads) and is transparent afterwards.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream header larger than this is refused rather than buffered.
const MAX_HEADER: usize = 8 * 1024;

pub struct HeaderPatch<Io> {
    inner: Io,
    /// Bytes read while looking for the end of the header.
    pending: Vec<u8>,
    /// Patched bytes not yet handed to the reader.
    ready: Vec<u8>,
    ready_pos: usize,
    done: bool,
}

impl<Io> HeaderPatch<Io> {
    pub fn new(inner: Io) -> Self {
        Self { inner, pending: Vec::new(), ready: Vec::new(), ready_pos: 0, done: false }
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

impl<Io: AsyncRead + Unpin> AsyncRead for HeaderPatch<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready_pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_pos);
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.done {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                // EOF before a complete header: hand over what we have.
                this.done = true;
                this.ready = std::mem::take(&mut this.pending);
                this.ready_pos = 0;
                continue;
            }
            this.pending.extend_from_slice(rb.filled());
            if let Some(patched) = patch_header(&this.pending) {
                this.ready = patched;
                this.ready_pos = 0;
                this.pending = Vec::new();
                this.done = true;
            } else if this.pending.len() > MAX_HEADER {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "stream header too large",
                )));
            }
        }
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for HeaderPatch<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
        let mut patched = HeaderPatch::new(client);
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
