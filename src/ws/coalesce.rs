//! The write side of a WebSocket connection: frames wait in order (fastwebsockets formats
//! each header; the payload is the queued message itself, not a copy) and one `flush` hands
//! a whole batch to the socket with `writev`, so a burst of small messages costs one syscall
//! and no copy before the kernel's. A flush that is interrupted keeps what it did not write
//! for the next one, which makes it safe to abandon a flush (to send a close frame) and
//! resume. Memory is only held while there is something to send: an idle connection keeps
//! no list.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};
use smallvec::SmallVec;
use tokio::io::AsyncWrite;

/// The longest header of a server frame: 2 bytes, 8 of length, no mask.
const MAX_HEADER: usize = 10;
/// Slices per `writev`, two a frame (Linux takes up to 1,024).
const MAX_SLICES: usize = 512;

/// One frame waiting to be written.
struct Framed {
    header: [u8; MAX_HEADER],
    header_len: u8,
    payload: Bytes,
}

impl Framed {
    fn len(&self) -> usize {
        usize::from(self.header_len) + self.payload.len()
    }
}

pub struct Coalesce<W> {
    inner: W,
    frames: VecDeque<Framed>,
    /// Bytes of the front frame already written.
    written: usize,
    /// Bytes waiting to be written, over all frames.
    pending: usize,
}

impl<W: AsyncWrite + Unpin> Coalesce<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            frames: VecDeque::new(),
            written: 0,
            pending: 0,
        }
    }

    /// Appends one frame, unmasked as a server's frames are (RFC 6455 5.1).
    pub fn frame(&mut self, opcode: OpCode, payload: Bytes) {
        let mut header = [0; MAX_HEADER];
        let header_len =
            Frame::new(true, opcode, None, Payload::Borrowed(&payload)).fmt_head(&mut header);
        self.pending += header_len + payload.len();
        self.frames.push_back(Framed {
            header,
            header_len: header_len as u8,
            payload,
        });
    }

    pub fn text(&mut self, payload: Bytes) {
        self.frame(OpCode::Text, payload);
    }

    /// A close frame with `code` and `reason` (at most 123 bytes, RFC 6455 5.5).
    pub fn close(&mut self, code: u16, reason: &[u8]) {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason);
        self.frame(OpCode::Close, payload.into());
    }

    /// Writes everything appended so far.
    pub async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.frames.is_empty() {
            let n = {
                let mut slices: SmallVec<[IoSlice<'_>; MAX_SLICES]> = SmallVec::new();
                let mut skip = self.written;
                for frame in &self.frames {
                    if slices.len() + 2 > MAX_SLICES {
                        break;
                    }
                    let header = &frame.header[..usize::from(frame.header_len)];
                    if skip < header.len() {
                        slices.push(IoSlice::new(&header[skip..]));
                        slices.push(IoSlice::new(&frame.payload));
                    } else {
                        slices.push(IoSlice::new(&frame.payload[skip - header.len()..]));
                    }
                    skip = 0;
                }
                ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        // Drained: the list goes too (a burst's would stay with an idle client otherwise).
        self.frames = VecDeque::new();
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// `n` more bytes were written: drops the frames they complete.
    fn advance(&mut self, mut n: usize) {
        self.pending -= n;
        while n > 0 {
            let front = self.frames.front().expect("written bytes belong to frames");
            let left = front.len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.written = 0;
            self.frames.pop_front();
        }
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn frames_reach_the_socket_only_on_flush() {
        let (client, mut server) = tokio::io::duplex(16);
        let mut writer = Coalesce::new(client);
        writer.text(Bytes::from_static(b"hello "));
        writer.text(Bytes::from_static(b"world"));
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
        writer.text(Bytes::from(medium.clone()));
        writer.text(Bytes::from(large.clone()));
        writer.frame(OpCode::Ping, Bytes::new());
        writer.close(1000, b"bye");
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
        writer.text(Bytes::from_static(b"01234567"));
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
