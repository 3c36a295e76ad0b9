//! The read side of a stream, rewritten on its way to the XML parser:
//! [`Rewrite`] passes writes through and hands every byte read to a
//! [`Rewriter`], which says what the parser gets instead. The component's
//! and the client's stream adapters ([`super::header`], [`super::tokens`])
//! are rewriters.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A streaming transformation of the bytes read from the peer.
pub trait Rewriter {
    /// Bytes read from the peer in; what the parser gets appended to `out`
    /// (bytes may be held back until more arrive).
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<()>;
    /// The peer closed the stream: whatever was held back.
    fn end(&mut self, out: &mut Vec<u8>);
}

pub struct Rewrite<Io, R> {
    inner: Io,
    rewriter: R,
    /// Rewritten bytes not yet handed to the reader.
    ready: Vec<u8>,
    ready_pos: usize,
    eof: bool,
}

impl<Io, R: Rewriter> Rewrite<Io, R> {
    pub fn new(inner: Io, rewriter: R) -> Self {
        Self { inner, rewriter, ready: Vec::new(), ready_pos: 0, eof: false }
    }
}

impl<Io: AsyncRead + Unpin, R: Rewriter + Unpin> AsyncRead for Rewrite<Io, R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready_pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_pos);
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            this.ready.clear();
            this.ready_pos = 0;
            if rb.filled().is_empty() {
                this.eof = true;
                this.rewriter.end(&mut this.ready);
            } else {
                this.rewriter.feed(rb.filled(), &mut this.ready)?;
            }
        }
    }
}

impl<Io: AsyncWrite + Unpin, R: Unpin> AsyncWrite for Rewrite<Io, R> {
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
