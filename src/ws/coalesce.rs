//! A write buffer between the WebSocket framer and the socket: frames are appended in memory
//! and one `flush` writes a whole batch, so a burst of small messages costs one syscall
//! instead of one each. A flush that is interrupted keeps its unwritten bytes for the next
//! one, which makes it safe to abandon a flush (to send a close frame) and resume. Memory is
//! only held while there is something to send: an idle connection's buffer is empty.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;

/// Capacity kept between batches; a larger buffer is released after it drains.
const RETAINED_CAPACITY: usize = 64 * 1024;

pub struct Coalesce<W> {
    inner: W,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already written to `inner`.
    written: usize,
}

impl<W> Coalesce<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buffer: Vec::new(),
            written: 0,
        }
    }

    /// Bytes waiting to be written.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.buffer.len() - self.written
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Coalesce<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().buffer.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut total = 0;
        for slice in slices {
            this.buffer.extend_from_slice(slice);
            total += slice.len();
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.written < this.buffer.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &this.buffer[this.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.written += n;
        }
        this.buffer.clear();
        this.written = 0;
        if this.buffer.capacity() > RETAINED_CAPACITY {
            this.buffer = Vec::new();
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_reach_the_socket_only_on_flush() {
        let (client, mut server) = tokio::io::duplex(16);
        let mut writer = Coalesce::new(client);
        writer.write_all(b"hello ").await.unwrap();
        writer.write_all(b"world").await.unwrap();
        assert_eq!(writer.pending(), 11);
        let reader = tokio::spawn(async move {
            let mut out = vec![0; 11];
            server.read_exact(&mut out).await.unwrap();
            out
        });
        writer.flush().await.unwrap();
        assert_eq!(writer.pending(), 0);
        assert_eq!(reader.await.unwrap(), b"hello world");
    }

    #[tokio::test]
    async fn an_abandoned_flush_resumes_where_it_stopped() {
        let (client, mut server) = tokio::io::duplex(4);
        let mut writer = Coalesce::new(client);
        writer.write_all(b"0123456789").await.unwrap();
        let abandoned =
            tokio::time::timeout(std::time::Duration::from_millis(20), writer.flush()).await;
        assert!(
            abandoned.is_err(),
            "the peer is not reading: the flush cannot finish"
        );
        assert_eq!(writer.pending(), 6);
        let reader = tokio::spawn(async move {
            let mut out = vec![0; 10];
            server.read_exact(&mut out).await.unwrap();
            out
        });
        writer.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), b"0123456789");
    }
}
