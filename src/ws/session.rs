//! One WebSocket connection, one task. The task waits on everything the connection does at
//! once: the close switch and shutdown, the answer to the client's last request, the client's
//! next frame, the connection's bounded queue of data messages, the socket taking what is
//! written, and its timers (idle, access, heartbeat). Data messages and replies are framed
//! into one write buffer ([`Coalesce`]) and written with one flush per batch.
//!
//! Requests are answered one at a time, in order. While one is pending (a subscribe waits for
//! the consumer task, which may wait for room in this connection's queue) data keeps flowing.
//! The next frame is read only after the answer, and only while the write buffer has room: a
//! client that sends requests and never reads the replies stops being read, its queue fills,
//! and the slow-client grace (4004) or the auth timeout (4002) closes it. Replies to a
//! subscribe come through the queue, queued before the subscription enters the index, so the
//! ack always precedes its data.
//!
//! One task rather than a reader and a writer with a channel between them: an idle connection
//! holds one task's state and nothing the setup needed (BENCHMARKS.md, "Where idle memory
//! goes").

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket, WebSocketError, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::time::{sleep_until, timeout_at, Instant};

use super::coalesce::Coalesce;
use crate::auth::AuthError;
use crate::connection::{AccessEnd, Connection, Since};
use crate::protocol::close::CloseCode;
use crate::protocol::{self, reply, ErrorCode, Request};
use crate::queue::Receiver;

type Io = TokioIo<Upgraded>;
type Reader = WebSocketRead<ReadHalf<Io>>;
type Writer = Coalesce<WriteHalf<Io>>;

/// Data messages taken from the queue at once.
const BATCH: usize = 256;
/// Batch slots kept once the queue is drained: a burst's 256 (8 KiB) do not stay with an
/// idle client.
const RETAINED_BATCH: usize = 64;
/// Data messages are taken from the queue while less than this waits to be written.
const WRITE_AHEAD: usize = 64 * 1024;
/// The client's next frame is read while less than this waits to be written.
const REPLY_AHEAD: usize = 256 * 1024;
/// How long the closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stream that cannot be read on (mid-frame) stays open for the close frame.
const UNREADABLE_LINGER: Duration = Duration::from_millis(500);

/// One client frame, owned, so that the reader can go on to the next.
struct Inbound {
    fin: bool,
    opcode: OpCode,
    payload: BytesMut,
}

/// How the session ended, which decides how the connection is wound down.
enum End {
    /// The gateway closes (the close switch, or shutdown): its close frame goes out after
    /// what is buffered, then the client's close is awaited.
    Close { code: CloseCode, reason: String },
    /// The client closed: its close frame is echoed.
    Echo(BytesMut),
    /// The socket failed: nobody to write to.
    Broken,
}

/// Sets the connection up; the future returned is the whole session, and its state is what
/// every idle connection holds, so it keeps nothing the setup needed.
pub fn run(
    ws: WebSocket<Io>,
    (connection, queue): (Connection, Receiver),
) -> impl Future<Output = ()> + Send {
    let settings = &connection.hub().settings;
    let (read_half, write_half) = tokio::io::split(ws.into_inner());
    // fastwebsockets reads and parses the client's frames; the session lays out its own
    // frames (`Coalesce`), so fastwebsockets' write half is left unused.
    let (mut reader, _) =
        fastwebsockets::after_handshake_split(read_half, tokio::io::sink(), Role::Server);
    reader.set_auto_close(false);
    reader.set_auto_pong(false);
    reader.set_max_message_size(settings.max_message_size + 1);
    let requests = Requests {
        bucket: TokenBucket::new(settings.rate_limit, settings.rate_burst),
        replies: Vec::new(),
        connection,
    };
    serve(reader, Coalesce::new(write_half), queue, requests)
}

async fn serve(reader: Reader, mut out: Writer, mut queue: Receiver, requests: Requests) {
    let hub = Arc::clone(requests.connection.hub());
    let outbound = Arc::clone(requests.connection.outbound());
    let settings = &hub.settings;
    let max_size = settings.max_message_size;
    let closed = pin!(outbound.closed());
    // A child token: polling the shared token would take the one lock every session shares.
    let shutdown_token = hub.shutdown.child_token();
    let shutdown = pin!(shutdown_token.cancelled());
    let (mut closed, mut shutdown) = (closed, shutdown);

    // The request being answered holds the requests' state; it is home otherwise.
    let mut access = access_deadline(&requests.connection);
    let mut home = Some(requests);
    let mut answering: Option<Pin<Box<dyn Future<Output = Requests> + Send>>> = None;
    let mut read = pin!(next_frame(reader));
    // False once the stream is mid-frame and unreadable (too large, not UTF-8).
    let mut readable = true;
    let mut fragments: Option<Vec<u8>> = None;
    let mut batch: Vec<Bytes> = Vec::new();
    // When the oldest data message not yet flushed was queued (0: none).
    let mut waited_since = 0;

    let mut last_seen = Instant::now();
    let (at, mut timer_code) = next_timeout(last_seen + settings.idle_timeout, access);
    let mut timer = pin!(sleep_until(at));
    let mut beat = Heartbeat::new(
        last_seen,
        settings.ping_interval,
        settings.app_ping_interval,
    );
    let mut heartbeat = pin!(sleep_until(beat.next()));

    let end = loop {
        tokio::select! {
            biased;
            code = &mut closed => break End::Close { code, reason: outbound.close_reason(code) },
            _ = &mut shutdown => {
                let code = CloseCode::GoingAway;
                break End::Close { code, reason: code.reason().to_owned() };
            }
            requests = poll_fn(|cx| match answering.as_mut() {
                Some(answer) => answer.as_mut().poll(cx),
                None => Poll::Pending,
            }) => {
                answering = None;
                let requests = home.insert(requests);
                requests.write_replies(&mut out);
                access = access_deadline(&requests.connection);
                let at;
                (at, timer_code) = next_timeout(last_seen + settings.idle_timeout, access);
                timer.as_mut().reset(at);
            }
            (reader, frame) = &mut read, if readable && home.is_some() && out.pending() < REPLY_AHEAD => {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(WebSocketError::FrameTooLarge) => {
                        readable = false;
                        outbound.close(CloseCode::TooBig);
                        continue;
                    }
                    // RFC 6455 8.1: a text frame that is not UTF-8 fails the connection, with 1007.
                    Err(WebSocketError::InvalidUTF8) => {
                        readable = false;
                        outbound.close(CloseCode::InvalidPayload);
                        continue;
                    }
                    Err(_) => break End::Broken,
                };
                read.set(next_frame(reader));
                last_seen = Instant::now();
                let at;
                (at, timer_code) = next_timeout(last_seen + settings.idle_timeout, access);
                timer.as_mut().reset(at);
                let requests = home.as_mut().expect("frames are read only while no request is pending");
                let message = match frame.opcode {
                    OpCode::Text if frame.fin => Some(frame.payload.freeze()),
                    OpCode::Text => {
                        fragments = Some(frame.payload.to_vec());
                        None
                    }
                    OpCode::Continuation => match fragments.as_mut() {
                        Some(message) if message.len() + frame.payload.len() > max_size => {
                            outbound.close(CloseCode::TooBig);
                            None
                        }
                        Some(message) => {
                            message.extend_from_slice(&frame.payload);
                            match fragments.take_if(|_| frame.fin) {
                                Some(message) if std::str::from_utf8(&message).is_err() => {
                                    requests.error(ErrorCode::InvalidMessage, "text is not valid UTF-8", None, None);
                                    None
                                }
                                message => message.map(Bytes::from),
                            }
                        }
                        // The rest of a binary message: already answered.
                        None => None,
                    },
                    OpCode::Binary => {
                        requests.error(
                            ErrorCode::InvalidMessage,
                            "binary frames are not supported: send JSON text frames",
                            None,
                            None,
                        );
                        None
                    }
                    OpCode::Ping => {
                        out.frame(Frame::pong(Payload::Borrowed(&frame.payload)));
                        None
                    }
                    OpCode::Pong => None,
                    OpCode::Close => break End::Echo(frame.payload),
                };
                requests.write_replies(&mut out);
                if let Some(message) = message {
                    let requests = home.take().expect("checked above");
                    // Boxed: answering is the largest state of a session (a subscribe waits
                    // for the consumer task), and inline it would be held by every idle one.
                    answering = Some(Box::pin(requests.answer(message)));
                }
            }
            received = queue.recv_many(&mut batch, BATCH), if out.pending() < WRITE_AHEAD => {
                if received == 0 {
                    break End::Broken;
                }
                if waited_since == 0 {
                    waited_since = queue.taken_oldest_at();
                }
                for message in batch.drain(..) {
                    out.frame(Frame::text(Payload::Borrowed(&message)));
                }
                if received < BATCH {
                    batch.shrink_to(RETAINED_BATCH);
                }
            }
            // A client that does not read leaves this pending; the branches above still run.
            flushed = out.flush(), if out.pending() > 0 => match flushed {
                Ok(()) => hub.metrics.observe_write(&mut waited_since),
                Err(_) => break End::Broken,
            },
            // The close switch ends the loop on the next turn.
            _ = &mut timer => outbound.close(timer_code),
            _ = &mut heartbeat => {
                beat.beat(Instant::now(), &mut out);
                heartbeat.as_mut().reset(beat.next());
            }
        }
    };

    // A pending answer finishes first, so that its subscriptions are known and released; the
    // close switch is set, so it does not wait for room in the queue.
    if matches!(end, End::Broken) {
        outbound.close(CloseCode::GoingAway);
    }
    let mut requests = match answering.take() {
        Some(answer) => tokio::time::timeout(CLOSE_TIMEOUT, answer).await.ok(),
        None => home.take(),
    };
    if let Some(requests) = &mut requests {
        requests.connection.unsubscribe_all();
    }
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    match end {
        End::Close { code, reason } => {
            hub.metrics
                .connections_closed
                .with_label_values(&[&code.as_u16().to_string()])
                .inc();
            out.frame(Frame::close(code.as_u16(), close_reason(&reason)));
            let flushed = matches!(timeout_at(deadline, out.flush()).await, Ok(Ok(())));
            if flushed && readable {
                // Read (and discard) until the client's close, so ours is not lost to a reset.
                let _ = timeout_at(deadline, async {
                    loop {
                        match read.as_mut().await {
                            (reader, Ok(frame)) if frame.opcode != OpCode::Close => {
                                read.set(next_frame(reader))
                            }
                            _ => break,
                        }
                    }
                })
                .await;
            } else if flushed {
                tokio::time::sleep(UNREADABLE_LINGER).await;
            }
        }
        End::Echo(payload) => {
            out.frame(Frame::close_raw(Payload::Bytes(payload)));
            let _ = timeout_at(deadline, out.flush()).await;
        }
        End::Broken => {}
    }
    // The connection (its slot and gauges) ends with the session.
    drop(requests);
}

/// Reads the next frame; the reader comes back with it.
async fn next_frame(mut reader: Reader) -> (Reader, Result<Inbound, WebSocketError>) {
    // Automatic pongs and close replies are off: the session frames them itself.
    let mut obligations = |_: Frame<'_>| std::future::ready(Ok::<(), std::io::Error>(()));
    let frame = reader
        .read_frame(&mut obligations)
        .await
        .map(|frame| Inbound {
            fin: frame.fin,
            opcode: frame.opcode,
            payload: match frame.payload {
                Payload::Bytes(payload) => payload,
                payload => BytesMut::from(&*payload),
            },
        });
    (reader, frame)
}

/// When the connection's access ends (no token yet, or the token expires), and with which
/// close code.
fn access_deadline(connection: &Connection) -> Option<(Instant, CloseCode)> {
    connection.access_ends().map(|(at, end)| match end {
        AccessEnd::NoToken => (at, CloseCode::AuthTimeout),
        AccessEnd::Expired => (at, CloseCode::TokenExpired),
    })
}

/// The earlier of the idle timeout and the access deadline, with its close code.
fn next_timeout(idle_at: Instant, access: Option<(Instant, CloseCode)>) -> (Instant, CloseCode) {
    match access {
        Some((at, code)) if at < idle_at => (at, code),
        _ => (idle_at, CloseCode::IdleTimeout),
    }
}

/// The gateway's pings: WebSocket pings every `--ping-interval`, and JSON `ping` messages
/// every `--app-ping-interval` when set, on one timer.
struct Heartbeat {
    ping_at: Instant,
    ping_every: Duration,
    app_ping: Option<(Instant, Duration)>,
}

impl Heartbeat {
    fn new(now: Instant, ping_every: Duration, app_every: Option<Duration>) -> Self {
        Self {
            ping_at: now + ping_every,
            ping_every,
            app_ping: app_every.map(|every| (now + every, every)),
        }
    }

    fn next(&self) -> Instant {
        match self.app_ping {
            Some((at, _)) => at.min(self.ping_at),
            None => self.ping_at,
        }
    }

    /// Frames the pings that are due.
    fn beat(&mut self, now: Instant, out: &mut Writer) {
        if now >= self.ping_at {
            out.frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[])));
            self.ping_at = now + self.ping_every;
        }
        if let Some((at, every)) = &mut self.app_ping {
            if now >= *at {
                let ping = reply::ping(crate::clock::now_millis());
                out.frame(Frame::text(Payload::Owned(ping)));
                *at = now + *every;
            }
        }
    }
}

/// What answering requests needs: the connection, its rate limit, and the replies of the
/// request being answered. A pending request owns it; the session gets it back with the
/// answer.
struct Requests {
    connection: Connection,
    bucket: TokenBucket,
    replies: Vec<Vec<u8>>,
}

impl Requests {
    async fn answer(mut self, text: Bytes) -> Self {
        self.handle(&text).await;
        self
    }

    /// Frames the replies, and frees their list: an idle connection keeps none.
    fn write_replies(&mut self, out: &mut Writer) {
        for reply in std::mem::take(&mut self.replies) {
            out.frame(Frame::text(Payload::Owned(reply)));
        }
    }

    /// Asks the session to close; the close frame follows what is already buffered.
    fn close(&self, code: CloseCode) {
        self.close_because(code, code.reason());
    }

    fn close_because(&self, code: CloseCode, reason: &str) {
        self.connection
            .outbound()
            .close_because(code, Some(reason.to_owned()));
    }

    fn error(&mut self, code: ErrorCode, message: &str, topic: Option<&str>, id: Option<&Value>) {
        self.connection
            .hub()
            .metrics
            .error_replies
            .with_label_values(&[code.as_str()])
            .inc();
        self.replies.push(reply::error(code, message, topic, id));
    }

    /// One client text message.
    async fn handle(&mut self, text: &[u8]) {
        let parsed = protocol::parse(text);
        if !self.bucket.take() {
            let id = match &parsed {
                Ok((_, id)) => id.clone(),
                Err(rejection) => rejection.id.clone(),
            };
            let message = format!(
                "more than {} messages per second: slow down",
                self.connection.hub().settings.rate_limit
            );
            return self.error(ErrorCode::RateLimited, &message, None, id.as_ref());
        }
        match parsed {
            Err(rejection) => self.error(
                rejection.code,
                &rejection.message,
                None,
                rejection.id.as_ref(),
            ),
            Ok((request, id)) => self.execute(request, id.as_ref()).await,
        }
    }

    async fn execute(&mut self, request: Request, id: Option<&Value>) {
        match request {
            Request::Auth { token } => self.authenticate(token, id),
            // A pong answers the gateway's heartbeat: not an action to refuse.
            Request::Pong => {}
            _ if self.connection.is_pending() => self.error(
                ErrorCode::Unauthenticated,
                r#"send {"action":"auth","token":"<JWT>"} first"#,
                None,
                id,
            ),
            Request::Ping { timestamp } => {
                let timestamp = timestamp.unwrap_or_else(|| crate::clock::now_millis().into());
                self.replies.push(reply::pong(timestamp, id));
            }
            Request::Subscribe {
                topic,
                filters,
                since,
                snapshot,
            } => {
                let subscribed = match self.connection.filter(&topic, filters.as_ref()) {
                    Ok(filter) => {
                        let since = match &since {
                            Some(since) => {
                                self.connection.since(Since::Json(since)).await.map(Some)
                            }
                            None => Ok(None),
                        };
                        match since {
                            Ok(since) => {
                                self.connection
                                    .subscribe(vec![(topic.clone(), filter)], since, snapshot, id)
                                    .await
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                // On success the ack (and what follows it) came through the connection's
                // queue.
                if let Err(e) = subscribed {
                    self.error(
                        e.code,
                        &e.message,
                        Some(e.topic.as_deref().unwrap_or(&topic)),
                        id,
                    );
                }
            }
            Request::Unsubscribe { topic } => {
                if self.connection.unsubscribe(&topic) {
                    self.replies
                        .push(reply::ack("unsubscribe", Some(&topic), id));
                } else {
                    self.error(
                        ErrorCode::NotSubscribed,
                        "this connection has no such subscription",
                        Some(&topic),
                        id,
                    );
                }
            }
        }
    }

    /// An `auth` message: the first token of a connection, or a fresh one that replaces the
    /// claims; subscriptions the fresh claims no longer cover end with `FORBIDDEN`.
    fn authenticate(&mut self, token: Option<String>, id: Option<&Value>) {
        if self.connection.hub().verifier.is_none() {
            return self.replies.push(reply::ack("auth", None, id));
        }
        let Some(token) = token else {
            return self.error(
                ErrorCode::InvalidMessage,
                "`auth` needs a `token`",
                None,
                id,
            );
        };
        let revoked = match self.connection.authorize(&token) {
            Ok(revoked) => revoked,
            Err(AuthError::Expired) => return self.close(CloseCode::TokenExpired),
            Err(e) => return self.close_because(CloseCode::Unauthorized, &e.to_string()),
        };
        self.replies.push(reply::ack("auth", None, id));
        for topic in revoked {
            let message = "the fresh token's `topics` claim no longer covers this topic";
            self.error(ErrorCode::Forbidden, message, Some(&topic), None);
        }
    }
}

/// A close frame's reason is at most 123 bytes (RFC 6455 5.5): longer ones are cut at a
/// character boundary.
pub(super) fn close_reason(reason: &str) -> &[u8] {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason.as_bytes()[..end]
}

/// Per-connection request rate limit: `rate` tokens per second, at most `burst` saved up.
struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            tokens: burst,
            rate: f64::from(rate),
            burst,
            refilled: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * self.rate)
            .min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TokenBucket;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn token_bucket_allows_the_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(10, 5);
        assert_eq!((0..10).filter(|_| bucket.take()).count(), 5);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!((0..10).filter(|_| bucket.take()).count(), 2);
    }
}
