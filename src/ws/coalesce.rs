//! The write side of a WebSocket connection: frames are laid out in memory (fastwebsockets
//! formats each header, the payload follows it) and one `flush` writes a whole batch, so a
//! burst of small messages costs one syscall instead of one each, and appending a frame is a
//! plain copy with no future of its own. A flush that is interrupted keeps its unwritten
//! bytes for the next one, which makes it safe to abandon a flush (to send a close frame) and
//! resume. Memory is only held while there is something to send: an idle connection's
//! buffer is empty.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use fastwebsockets::Frame;
use tokio::io::AsyncWrite;

/// Capacity kept between batches; a larger buffer is released after it drains.
const RETAINED_CAPACITY: usize = 64 * 1024;
/// The longest header of a server frame: 2 bytes, 8 of length, no mask.
const MAX_HEADER: usize = 10;

pub struct Coalesce<W> {
    inner: W,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already written to `inner`.
    written: usize,
}

impl<W: AsyncWrite + Unpin> Coalesce<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buffer: Vec::new(),
            written: 0,
        }
    }

    /// Appends one frame, unmasked as a server's frames are (RFC 6455 5.1).
    pub fn frame(&mut self, mut frame: Frame<'_>) {
        let mut header = [0; MAX_HEADER];
        let length = frame.fmt_head(&mut header);
        self.buffer.reserve(length + frame.payload.len());
        self.buffer.extend_from_slice(&header[..length]);
        self.buffer.extend_from_slice(&frame.payload);
    }

    /// Writes everything appended so far.
    pub async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buffer[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buffer.clear();
        self.written = 0;
        if self.buffer.capacity() > RETAINED_CAPACITY {
            self.buffer = Vec::new();
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.buffer.len() - self.written
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::{OpCode, Payload};
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn frames_reach_the_socket_only_on_flush() {
        let (client, mut server) = tokio::io::duplex(16);
        let mut writer = Coalesce::new(client);
        writer.frame(Frame::text(Payload::Borrowed(b"hello ")));
        writer.frame(Frame::text(Payload::Borrowed(b"world")));
        assert_eq!(writer.pending(), 2 + 6 + 2 + 5);
        let reader = tokio::spawn(async move {
            let mut out = vec![0; 15];
            server.read_exact(&mut out).await.unwrap();
            out
        });
        writer.flush().await.unwrap();
        assert_eq!(writer.pending(), 0);
        assert_eq!(reader.await.unwrap(), b"\x81\x06hello \x81\x05world");
    }

    #[tokio::test]
    async fn headers_carry_each_length_form_and_opcode() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut writer = Coalesce::new(client);
        let (medium, large) = (vec![b'm'; 300], vec![b'l'; 70_000]);
        writer.frame(Frame::text(Payload::Borrowed(&medium)));
        writer.frame(Frame::text(Payload::Borrowed(&large)));
        writer.frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[])));
        writer.frame(Frame::close(1000, b"bye"));
        writer.flush().await.unwrap();
        drop(writer);
        let mut out = Vec::new();
        server.read_to_end(&mut out).await.unwrap();
        let mut expected = vec![0x81, 126, 1, 44];
        expected.extend_from_slice(&medium);
        expected.extend_from_slice(&[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        expected.extend_from_slice(&large);
        expected.extend_from_slice(&[0x89, 0, 0x88, 5, 0x03, 0xe8, b'b', b'y', b'e']);
        assert_eq!(out.len(), expected.len());
        assert!(out == expected, "frames differ from RFC 6455 framing");
    }

    #[tokio::test]
    async fn an_abandoned_flush_resumes_where_it_stopped() {
        let (client, mut server) = tokio::io::duplex(4);
        let mut writer = Coalesce::new(client);
        writer.frame(Frame::text(Payload::Borrowed(b"01234567")));
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
        assert_eq!(reader.await.unwrap(), b"\x81\x0801234567");
    }
}
