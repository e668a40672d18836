//! Large socket reads without a large buffer per connection (issue 6, idle
//! memory).
//!
//! tungstenite keeps its read buffer for the connection's whole life, and
//! reads at most that buffer's size per syscall. A 4 KiB buffer costs 4 KiB
//! of RSS per idle client; a 512-byte one costs 30% more CPU per message
//! under load, because each `read` then carries ~5 frames instead of ~40.
//!
//! [`ReadAhead`] sits under tungstenite and gives both: it reads from the
//! socket into a scratch buffer shared by every connection on the thread
//! (64 KiB), hands tungstenite what it asked for, and keeps only the unread
//! rest, in an allocation of exactly that size that is freed as soon as it
//! is consumed. An idle connection holds nothing here; a busy one holds at
//! most one read's worth (< 64 KiB) and reads the socket again only when
//! that is gone, so the memory stays bounded and TCP still pushes back.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket per syscall, at most.
const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    /// One per runtime thread: a read completes synchronously into it, and
    /// its bytes are copied out before the next read on this thread.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// A stream whose reads go through the per-thread scratch buffer.
#[derive(Debug)]
pub(crate) struct ReadAhead<S> {
    inner: S,
    /// Read from the socket, not yet handed out; `None` when drained.
    pending: Option<Box<[u8]>>,
    /// How much of `pending` is handed out already.
    offset: usize,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> ReadAhead<S> {
        ReadAhead { inner, pending: None, offset: 0 }
    }

    /// Hands out buffered bytes; true if there were any.
    fn take_pending(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let Some(pending) = &self.pending else { return false };
        let rest = &pending[self.offset..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.offset += n;
        if self.offset == pending.len() {
            self.pending = None;
            self.offset = 0;
        }
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 || this.take_pending(buf) {
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SCRATCH_LEN {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH.with(|scratch| {
            // Only a stream nested inside another ReadAhead on this thread
            // could find the scratch borrowed; it then reads directly.
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            };
            let mut read = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let filled = read.filled();
                    let n = filled.len().min(buf.remaining());
                    buf.put_slice(&filled[..n]);
                    if n < filled.len() {
                        this.pending = Some(filled[n..].into());
                    }
                    Poll::Ready(Ok(()))
                }
                other => other,
            }
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_see_every_byte_in_order_and_hold_nothing_after() {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&data).await.unwrap();
        drop(client);
        let mut stream = ReadAhead::new(server);
        let mut out = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
            // Never more buffered than one scratch read.
            assert!(stream.pending.as_ref().map_or(0, |p| p.len()) < SCRATCH_LEN);
        }
        assert_eq!(out, data);
        assert!(stream.pending.is_none(), "drained: no allocation kept");
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut stream = ReadAhead::new(client);
        stream.write_all(b"hello").await.unwrap();
        stream.flush().await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
