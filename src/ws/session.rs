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
use crate::hub::Settings;
use crate::protocol::close::CloseCode;
use crate::protocol::{self, reply, ErrorCode, Request};
use crate::queue::Receiver;

type Io = TokioIo<Upgraded>;
type Reader = WebSocketRead<ReadHalf<Io>>;
type Writer = Coalesce<WriteHalf<Io>>;
type ReadResult = Result<Inbound, WebSocketError>;

/// Data messages taken from the queue at once.
const BATCH: usize = 256;
/// Batch slots kept once the queue is drained: a burst's 256 (8 KiB) do not stay with an
/// idle client.
const RETAINED_BATCH: usize = 64;
/// Batches up to this many messages do not keep their list.
const FEW: usize = 4;
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
    let now = Instant::now();
    let beat = Heartbeat::new(now, settings);
    let idle_at = now + settings.idle_timeout;
    let requests = Requests {
        bucket: TokenBucket::new(settings.rate_limit, settings.rate_burst),
        replies: Vec::new(),
        connection,
    };
    serve(Box::new(State {
        out: Coalesce::new(write_half),
        queue,
        access: access_deadline(&requests.connection),
        home: Some(requests),
        answering: None,
        read: Box::pin(next_frame(reader)),
        readable: true,
        fragments: None,
        batch: Vec::new(),
        waited_since: 0,
        idle_at,
        beat,
    }))
}

/// What a session keeps for as long as it lives, on the heap: an async fn keeps its
/// arguments twice (as captured, and as locals) and pads between its states, so the task
/// holds one pointer to this and the futures it waits on, no more.
struct State {
    out: Writer,
    queue: Receiver,
    /// The requests' state, home while no request is being answered.
    home: Option<Requests>,
    /// The request being answered, which holds the requests' state meanwhile.
    answering: Option<Pin<Box<dyn Future<Output = Requests> + Send>>>,
    /// The client's next frame. fastwebsockets' read is not cancel-safe: the same future is
    /// polled until it yields its frame.
    read: Pin<Box<dyn Future<Output = (Reader, ReadResult)> + Send>>,
    /// False once the stream is mid-frame and unreadable (too large, not UTF-8).
    readable: bool,
    fragments: Option<Vec<u8>>,
    batch: Vec<Bytes>,
    /// When the oldest data message not yet flushed was queued (0: none).
    waited_since: u64,
    /// When access ends (no token yet, or it expires), and the close code it ends with.
    access: Option<(Instant, CloseCode)>,
    /// When the connection times out unless a frame comes first.
    idle_at: Instant,
    beat: Heartbeat,
}

impl State {
    fn requests(&self) -> &Requests {
        self.home.as_ref().expect("no request is pending")
    }

    /// The earlier of the idle timeout and the access deadline, with its close code.
    fn timeout(&self) -> (Instant, CloseCode) {
        match self.access {
            Some((at, code)) if at < self.idle_at => (at, code),
            _ => (self.idle_at, CloseCode::IdleTimeout),
        }
    }

    /// When the session's one timer should next fire: a timeout or a ping.
    fn wake_at(&self) -> Instant {
        self.timeout().0.min(self.beat.next())
    }
}

async fn serve(mut s: Box<State>) {
    let hub = Arc::clone(s.requests().connection.hub());
    let outbound = Arc::clone(s.requests().connection.outbound());
    let settings = &hub.settings;
    let max_size = settings.max_message_size;
    // Thrown by a close request and by shutdown alike (`Outbound::closed_by`); one switch
    // per connection, as polling the shared shutdown token would take the one lock every
    // session shares.
    let mut closed = pin!(outbound.closed());
    // One timer for the timeouts and the pings.
    let mut timer = pin!(sleep_until(s.wake_at()));

    let end = loop {
        tokio::select! {
            biased;
            code = &mut closed => break End::Close { code, reason: outbound.close_reason(code) },
            requests = poll_fn(|cx| match s.answering.as_mut() {
                Some(answer) => answer.as_mut().poll(cx),
                None => Poll::Pending,
            }) => {
                s.answering = None;
                let requests = s.home.insert(requests);
                requests.write_replies(&mut s.out);
                s.access = access_deadline(&requests.connection);
                timer.as_mut().reset(s.wake_at());
            }
            (reader, frame) = &mut s.read, if s.readable && s.home.is_some() && s.out.pending() < REPLY_AHEAD => {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(WebSocketError::FrameTooLarge) => {
                        s.readable = false;
                        outbound.close(CloseCode::TooBig);
                        continue;
                    }
                    // RFC 6455 8.1: a text frame that is not UTF-8 fails the connection, with 1007.
                    Err(WebSocketError::InvalidUTF8) => {
                        s.readable = false;
                        outbound.close(CloseCode::InvalidPayload);
                        continue;
                    }
                    Err(_) => break End::Broken,
                };
                s.read = Box::pin(next_frame(reader));
                s.idle_at = Instant::now() + settings.idle_timeout;
                timer.as_mut().reset(s.wake_at());
                let requests = s.home.as_mut().expect("frames are read only while no request is pending");
                let message = match frame.opcode {
                    OpCode::Text if frame.fin => Some(frame.payload.freeze()),
                    OpCode::Text => {
                        s.fragments = Some(frame.payload.to_vec());
                        None
                    }
                    OpCode::Continuation => match s.fragments.as_mut() {
                        Some(message) if message.len() + frame.payload.len() > max_size => {
                            outbound.close(CloseCode::TooBig);
                            None
                        }
                        Some(message) => {
                            message.extend_from_slice(&frame.payload);
                            match s.fragments.take_if(|_| frame.fin) {
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
                        s.out.frame(OpCode::Pong, frame.payload.freeze());
                        None
                    }
                    OpCode::Pong => None,
                    OpCode::Close => break End::Echo(frame.payload),
                };
                requests.write_replies(&mut s.out);
                if let Some(message) = message {
                    let requests = s.home.take().expect("checked above");
                    // Boxed: answering is the largest state of a session (a subscribe waits
                    // for the consumer task), and inline it would be held by every idle one.
                    s.answering = Some(Box::pin(requests.answer(message)));
                }
            }
            received = s.queue.recv_many(&mut s.batch, BATCH), if s.out.pending() < WRITE_AHEAD => {
                if received == 0 {
                    break End::Broken;
                }
                if s.waited_since == 0 {
                    s.waited_since = s.queue.taken_oldest_at();
                }
                for message in s.batch.drain(..) {
                    s.out.text(message);
                }
                // A few messages (the usual wake-up of a quiet connection) leave no list
                // behind; a burst keeps some room for the next.
                if received <= FEW {
                    s.batch = Vec::new();
                } else if received < BATCH {
                    s.batch.shrink_to(RETAINED_BATCH);
                }
            }
            // A client that does not read leaves this pending; the branches above still run.
            flushed = s.out.flush(), if s.out.pending() > 0 => match flushed {
                Ok(()) => hub.metrics.observe_write(&mut s.waited_since),
                Err(_) => break End::Broken,
            },
            _ = &mut timer => {
                let now = Instant::now();
                match s.timeout() {
                    // The close switch ends the loop on the next turn.
                    (at, code) if at <= now => outbound.close(code),
                    _ => s.beat.beat(now, &mut s.out, settings),
                }
                timer.as_mut().reset(s.wake_at());
            }
        }
    };

    // A pending answer finishes first, so that its subscriptions are known and released; the
    // close switch is set, so it does not wait for room in the queue.
    if matches!(end, End::Broken) {
        outbound.close(CloseCode::GoingAway);
    }
    let mut requests = match s.answering.take() {
        Some(answer) => tokio::time::timeout(CLOSE_TIMEOUT, answer).await.ok(),
        None => s.home.take(),
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
            s.out.close(code.as_u16(), close_reason(&reason));
            let flushed = matches!(timeout_at(deadline, s.out.flush()).await, Ok(Ok(())));
            if flushed && s.readable {
                // Read (and discard) until the client's close, so ours is not lost to a reset.
                let _ = timeout_at(deadline, async {
                    loop {
                        match (&mut s.read).await {
                            (reader, Ok(frame)) if frame.opcode != OpCode::Close => {
                                s.read = Box::pin(next_frame(reader))
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
            s.out.frame(OpCode::Close, payload.freeze());
            let _ = timeout_at(deadline, s.out.flush()).await;
        }
        End::Broken => {}
    }
    // The connection (its slot and gauges) ends with the session.
    drop(requests);
}

/// Reads the next frame; the reader comes back with it.
async fn next_frame(mut reader: Reader) -> (Reader, ReadResult) {
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

/// The gateway's pings: WebSocket pings every `--ping-interval`, and JSON `ping` messages
/// every `--app-ping-interval` when set.
struct Heartbeat {
    ping_at: Instant,
    app_ping_at: Option<Instant>,
}

impl Heartbeat {
    fn new(now: Instant, settings: &Settings) -> Self {
        Self {
            ping_at: now + settings.ping_interval,
            app_ping_at: settings.app_ping_interval.map(|every| now + every),
        }
    }

    fn next(&self) -> Instant {
        match self.app_ping_at {
            Some(at) => at.min(self.ping_at),
            None => self.ping_at,
        }
    }

    /// Frames the pings that are due.
    fn beat(&mut self, now: Instant, out: &mut Writer, settings: &Settings) {
        if now >= self.ping_at {
            out.frame(OpCode::Ping, Bytes::new());
            self.ping_at = now + settings.ping_interval;
        }
        if let (Some(at), Some(every)) = (&mut self.app_ping_at, settings.app_ping_interval) {
            if now >= *at {
                let ping = reply::ping(crate::clock::now_millis());
                out.text(Bytes::from(ping));
                *at = now + every;
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
            out.text(Bytes::from(reply));
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
            Request::Auth { token } => self.authenticate(token, id).await,
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
            Request::Presence { topic } => match self.connection.presence_allowed(&topic) {
                Ok(()) => {
                    let hub = self.connection.hub();
                    let counts = hub.presence.counts(&topic);
                    let named = hub.verifier.is_some();
                    self.replies
                        .push(crate::presence::message(&topic, &counts, named, None, id));
                }
                Err(e) => self.error(e.code, &e.message, Some(&topic), id),
            },
            Request::Subscribe {
                topic,
                filters,
                since,
                snapshot,
                presence,
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
                // queue; presence messages follow from the next tick on.
                if presence && matches!(subscribed, Ok(Some(_))) {
                    let hub = Arc::clone(self.connection.hub());
                    hub.presence.watch(&topic, self.connection.outbound());
                }
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
    async fn authenticate(&mut self, token: Option<String>, id: Option<&Value>) {
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
        if let Some(verifier) = &self.connection.hub().verifier {
            verifier.prepare(&token).await;
        }
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
    use super::{State, TokenBucket};
    use std::time::Duration;

    /// Every idle connection holds one `State`, inside the allocator's 512-byte class on
    /// x86-64 (BENCHMARKS.md, "Where idle memory goes"). A field that pushes it over
    /// costs every connection the next class.
    #[test]
    fn a_sessions_state_stays_in_its_allocation_class() {
        let size = std::mem::size_of::<State>();
        assert!(size <= 512, "State grew to {size} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_allows_the_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(10, 5);
        assert_eq!((0..10).filter(|_| bucket.take()).count(), 5);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!((0..10).filter(|_| bucket.take()).count(), 2);
    }
}
