//! One WebSocket connection. The reader (this task) parses client requests, updates the
//! index and keeps the idle timer; a writer task owns the socket's write half and takes, in
//! order of priority, close requests, replies, and batches of data messages from the
//! connection's bounded queue, then flushes each batch with one write. Replies to a subscribe
//! are queued before the subscription enters the index, so the ack always precedes its data.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket, WebSocketError, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};

use super::coalesce::Coalesce;
use crate::auth::AuthError;
use crate::connection::{AccessEnd, Connection, Since};
use crate::hub::Hub;
use crate::outbound::Outbound;
use crate::protocol::close::CloseCode;
use crate::protocol::{self, reply, ErrorCode, Request};

type Io = TokioIo<Upgraded>;
type Reader = WebSocketRead<ReadHalf<Io>>;
type Writer = Coalesce<WriteHalf<Io>>;

/// Data messages the writer takes from the queue per batch (one flush each).
const BATCH: usize = 256;
/// Batch slots kept once the queue is drained: a burst's 256 (8 KiB) do not stay with an
/// idle client.
const RETAINED_BATCH: usize = 64;
/// Replies waiting for the writer; a client that floods requests without reading waits.
const CONTROL_QUEUE: usize = 64;
/// How long the closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the reader asks the writer to send.
enum Control {
    Text(Vec<u8>),
    Pong(Vec<u8>),
    /// The client's close frame, echoed to complete its closing handshake.
    Echo(Vec<u8>),
}

/// How the read loop ended, which decides how the connection is wound down.
enum Ending {
    /// The writer finished (close sent, or the socket failed): wait for the client's close.
    WriterDone,
    /// The gateway asked the writer to close: let it, then wait for the client's close.
    GatewayClosed,
    /// The client closed: its close is echoed, nothing more to read.
    Gone,
    /// The stream broke (reset, or ended without a close): nobody to write to either.
    Broken,
    /// The stream is mid-frame and unreadable: let the close go out, give the client a moment.
    Unreadable,
}

/// Sets the connection up and starts its writer task; the future returned is the reader,
/// and its state is what every idle connection holds, so it keeps nothing the setup needed.
pub fn run(
    ws: WebSocket<Io>,
    (connection, queue): (Connection, crate::queue::Receiver),
) -> impl std::future::Future<Output = ()> + Send {
    let hub = Arc::clone(connection.hub());
    let settings = &hub.settings;
    let (read_half, write_half) = tokio::io::split(ws.into_inner());
    // fastwebsockets reads and parses the client's frames; the writer lays out its frames
    // itself (`Coalesce`), so fastwebsockets' write half is left unused.
    let (mut reader, _) =
        fastwebsockets::after_handshake_split(read_half, tokio::io::sink(), Role::Server);
    reader.set_auto_close(false);
    reader.set_auto_pong(false);
    reader.set_max_message_size(settings.max_message_size + 1);
    let writer = Coalesce::new(write_half);

    // Boxed: a channel allocates its first block of 32 slots up front, and 32 pointers are a
    // quarter of 32 replies (about 800 bytes less for every connection, idle ones included).
    let (control, control_queue) = mpsc::channel(CONTROL_QUEUE);
    let writer_task = tokio::spawn(write_loop(
        writer,
        control_queue,
        queue,
        Arc::clone(connection.outbound()),
        Arc::clone(&hub),
    ));

    let session = Session {
        connection,
        control,
        bucket: TokenBucket::new(settings.rate_limit, settings.rate_burst),
    };
    session.serve(reader, writer_task)
}

impl Session {
    /// Reads the client's frames until the connection ends, then winds it down.
    async fn serve(mut self, mut reader: Reader, mut writer_task: tokio::task::JoinHandle<()>) {
        let ending = self.read_loop(&mut reader, &mut writer_task).await;
        self.connection.unsubscribe_all();

        let deadline = Instant::now() + CLOSE_TIMEOUT;
        // A broken stream has nobody to write to; otherwise let the writer finish its close.
        let broken = matches!(ending, Ending::Broken);
        if broken
            || (!matches!(ending, Ending::WriterDone)
                && tokio::time::timeout_at(deadline, &mut writer_task)
                    .await
                    .is_err())
        {
            writer_task.abort();
        }
        match ending {
            Ending::WriterDone | Ending::GatewayClosed => {
                let _ = tokio::time::timeout_at(deadline, await_client_close(&mut reader)).await;
            }
            Ending::Unreadable => tokio::time::sleep(Duration::from_millis(500)).await,
            Ending::Gone | Ending::Broken => {}
        }
        // The connection (its slot and gauges) ends with the session.
        drop(self);
    }
}

/// Reads (and discards) until the client's close frame or the end of the stream.
async fn await_client_close(reader: &mut Reader) {
    let mut obligations = no_obligations;
    while let Ok(frame) = reader.read_frame(&mut obligations).await {
        if frame.opcode == OpCode::Close {
            break;
        }
    }
}

/// Automatic pongs and close replies are off: the session sends them through the writer.
fn no_obligations(_frame: Frame<'_>) -> std::future::Ready<Result<(), std::io::Error>> {
    std::future::ready(Ok(()))
}

struct Session {
    connection: Connection,
    control: mpsc::Sender<Box<Control>>,
    bucket: TokenBucket,
}

/// Resolves with the close code when the access deadline passes; never without a deadline.
async fn access_deadline(deadline: Option<(Instant, CloseCode)>) -> CloseCode {
    match deadline {
        Some((at, code)) => {
            sleep_until(at).await;
            code
        }
        None => std::future::pending().await,
    }
}

impl Session {
    async fn read_loop(
        &mut self,
        reader: &mut Reader,
        writer_task: &mut tokio::task::JoinHandle<()>,
    ) -> Ending {
        let idle_timeout = self.connection.hub().settings.idle_timeout;
        let mut last_seen = Instant::now();
        let mut fragments: Option<Vec<u8>> = None;
        let mut obligations = no_obligations;
        loop {
            let deadline = self.connection.access_ends().map(|(at, end)| match end {
                AccessEnd::NoToken => (at, CloseCode::AuthTimeout),
                AccessEnd::Expired => (at, CloseCode::TokenExpired),
            });
            let frame = tokio::select! {
                biased;
                _ = &mut *writer_task => return Ending::WriterDone,
                _ = sleep_until(last_seen + idle_timeout) => return self.close(CloseCode::IdleTimeout).await,
                code = access_deadline(deadline) => return self.close(code).await,
                frame = reader.read_frame(&mut obligations) => frame,
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(WebSocketError::FrameTooLarge) => {
                    self.close(CloseCode::TooBig).await;
                    return Ending::Unreadable;
                }
                // RFC 6455 8.1: a text frame that is not UTF-8 fails the connection, with 1007.
                Err(WebSocketError::InvalidUTF8) => {
                    self.close(CloseCode::InvalidPayload).await;
                    return Ending::Unreadable;
                }
                Err(_) => return Ending::Broken,
            };
            last_seen = Instant::now();
            // Boxed: answering a request is the largest state of the session (a subscribe
            // waits for the consumer task), and inline it would be held by every idle
            // connection that is only waiting for its next frame.
            if let Some(ending) = Box::pin(self.answer(frame, &mut fragments)).await {
                return ending;
            }
        }
    }

    /// Answers one frame; `Some` when the session ends with it.
    async fn answer(
        &mut self,
        frame: Frame<'_>,
        fragments: &mut Option<Vec<u8>>,
    ) -> Option<Ending> {
        let max_size = self.connection.hub().settings.max_message_size;
        let sent = match frame.opcode {
            OpCode::Text if frame.fin => self.handle(&frame.payload).await,
            OpCode::Text => {
                *fragments = Some(frame.payload.to_vec());
                true
            }
            OpCode::Continuation => match fragments.as_mut() {
                Some(message) if message.len() + frame.payload.len() > max_size => {
                    return Some(self.close(CloseCode::TooBig).await);
                }
                Some(message) => {
                    message.extend_from_slice(&frame.payload);
                    match fragments.take_if(|_| frame.fin) {
                        Some(message) if std::str::from_utf8(&message).is_err() => {
                            self.error(
                                ErrorCode::InvalidMessage,
                                "text is not valid UTF-8",
                                None,
                                None,
                            )
                            .await
                        }
                        Some(message) => self.handle(&message).await,
                        None => true,
                    }
                }
                // The rest of a binary message: already answered.
                None => true,
            },
            OpCode::Binary => {
                self.error(
                    ErrorCode::InvalidMessage,
                    "binary frames are not supported: send JSON text frames",
                    None,
                    None,
                )
                .await
            }
            OpCode::Ping => self.send(Control::Pong(frame.payload.to_vec())).await,
            OpCode::Pong => true,
            OpCode::Close => {
                self.send(Control::Echo(frame.payload.to_vec())).await;
                return Some(Ending::Gone);
            }
        };
        (!sent).then_some(Ending::WriterDone)
    }

    /// Asks the writer to close; never waits, even when the writer is stuck on a client
    /// that does not read.
    async fn close(&self, code: CloseCode) -> Ending {
        self.close_because(code, code.reason()).await
    }

    async fn close_because(&self, code: CloseCode, reason: &str) -> Ending {
        self.connection
            .outbound()
            .close_because(code, Some(reason.to_owned()));
        Ending::GatewayClosed
    }

    /// Queues a reply for the writer; false when the writer is gone or the connection is
    /// closing. A client that sends requests and never reads the replies fills the queue:
    /// waiting for room is bounded by the slow-client grace (then 4004) and, before a token
    /// came, by the auth timeout (then 4002), so such a client cannot outlive either.
    async fn send(&self, control: Control) -> bool {
        let now = Instant::now();
        let mut deadline = (
            now + self.connection.hub().settings.slow_client_grace,
            CloseCode::SlowConsumer,
        );
        if let Some((at, AccessEnd::NoToken)) = self.connection.access_ends() {
            if at < deadline.0 {
                deadline = (at, CloseCode::AuthTimeout);
            }
        }
        match tokio::time::timeout_at(deadline.0, self.control.send(Box::new(control))).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                self.connection.outbound().close(deadline.1);
                false
            }
        }
    }

    async fn error(
        &self,
        code: ErrorCode,
        message: &str,
        topic: Option<&str>,
        id: Option<&Value>,
    ) -> bool {
        self.connection
            .hub()
            .metrics
            .error_replies
            .with_label_values(&[code.as_str()])
            .inc();
        self.send(Control::Text(reply::error(code, message, topic, id)))
            .await
    }

    /// One client text message.
    async fn handle(&mut self, text: &[u8]) -> bool {
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
            return self
                .error(ErrorCode::RateLimited, &message, None, id.as_ref())
                .await;
        }
        match parsed {
            Err(rejection) => {
                self.error(
                    rejection.code,
                    &rejection.message,
                    None,
                    rejection.id.as_ref(),
                )
                .await
            }
            Ok((request, id)) => self.execute(request, id.as_ref()).await,
        }
    }

    async fn execute(&mut self, request: Request, id: Option<&Value>) -> bool {
        match request {
            Request::Auth { token } => self.authenticate(token, id).await,
            // A pong answers the gateway's heartbeat: not an action to refuse.
            Request::Pong => true,
            _ if self.connection.is_pending() => {
                self.error(
                    ErrorCode::Unauthenticated,
                    r#"send {"action":"auth","token":"<JWT>"} first"#,
                    None,
                    id,
                )
                .await
            }
            Request::Ping { timestamp } => {
                let timestamp = timestamp.unwrap_or_else(|| crate::clock::now_millis().into());
                self.send(Control::Text(reply::pong(timestamp, id))).await
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
                match subscribed {
                    // The ack (and what follows it) came through the connection's queue.
                    Ok(joined) => joined.is_some(),
                    Err(e) => {
                        self.error(
                            e.code,
                            &e.message,
                            Some(e.topic.as_deref().unwrap_or(&topic)),
                            id,
                        )
                        .await
                    }
                }
            }
            Request::Unsubscribe { topic } => {
                if !self.connection.unsubscribe(&topic) {
                    return self
                        .error(
                            ErrorCode::NotSubscribed,
                            "this connection has no such subscription",
                            Some(&topic),
                            id,
                        )
                        .await;
                }
                self.send(Control::Text(reply::ack("unsubscribe", Some(&topic), id)))
                    .await
            }
        }
    }

    /// An `auth` message: the first token of a connection, or a fresh one that replaces the
    /// claims; subscriptions the fresh claims no longer cover end with `FORBIDDEN`.
    async fn authenticate(&mut self, token: Option<String>, id: Option<&Value>) -> bool {
        if self.connection.hub().verifier.is_none() {
            return self.send(Control::Text(reply::ack("auth", None, id))).await;
        }
        let Some(token) = token else {
            return self
                .error(
                    ErrorCode::InvalidMessage,
                    "`auth` needs a `token`",
                    None,
                    id,
                )
                .await;
        };
        let revoked = match self.connection.authorize(&token) {
            Ok(revoked) => revoked,
            Err(AuthError::Expired) => {
                self.close(CloseCode::TokenExpired).await;
                return false;
            }
            Err(e) => {
                self.close_because(CloseCode::Unauthorized, &e.to_string())
                    .await;
                return false;
            }
        };
        if !self.send(Control::Text(reply::ack("auth", None, id))).await {
            return false;
        }
        for topic in revoked {
            let message = "the fresh token's `topics` claim no longer covers this topic";
            if !self
                .error(ErrorCode::Forbidden, message, Some(&topic), None)
                .await
            {
                return false;
            }
        }
        true
    }
}

/// The writer task: the only code that writes to the socket.
async fn write_loop(
    mut ws: Writer,
    mut control: mpsc::Receiver<Box<Control>>,
    mut queue: crate::queue::Receiver,
    outbound: Arc<Outbound>,
    shared: Arc<Hub>,
) {
    let settings = &shared.settings;
    let start = Instant::now();
    let mut ping = interval_at(start + settings.ping_interval, settings.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let app_period = settings
        .app_ping_interval
        .unwrap_or(Duration::from_secs(3600));
    let mut app_ping = interval_at(start + app_period, app_period);
    app_ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch: Vec<Bytes> = Vec::new();
    // When the oldest data message not yet flushed was queued (0: none).
    let mut waited_since = 0;
    // Registered once, not per batch: re-registering with the connection's and the shared
    // shutdown token on every wake-up was a visible share of the per-delivery cost.
    // A child token: polling the shared token would take the one lock every writer shares.
    let shutdown_token = shared.shutdown.child_token();
    let closed = outbound.closed();
    let shutdown = shutdown_token.cancelled();
    tokio::pin!(closed, shutdown);

    let closing = loop {
        tokio::select! {
            biased;
            code = &mut closed => break Some((code, outbound.close_reason(code))),
            _ = &mut shutdown => break Some((CloseCode::GoingAway, CloseCode::GoingAway.reason().to_owned())),
            message = control.recv() => match message.map(|m| *m) {
                Some(Control::Text(text)) => ws.frame(Frame::text(Payload::Owned(text))),
                Some(Control::Pong(payload)) => ws.frame(Frame::pong(Payload::Owned(payload))),
                Some(Control::Echo(payload)) => {
                    ws.frame(Frame::close_raw(Payload::Owned(payload)));
                    break None;
                }
                None => return,
            },
            received = queue.recv_many(&mut batch, BATCH) => {
                if received == 0 {
                    return;
                }
                waited_since = queue.taken_oldest_at();
                for message in batch.drain(..) {
                    ws.frame(Frame::text(Payload::Borrowed(&message)));
                }
                if received < BATCH {
                    batch.shrink_to(RETAINED_BATCH);
                }
            }
            _ = ping.tick() => ws.frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]))),
            _ = app_ping.tick(), if settings.app_ping_interval.is_some() => {
                ws.frame(Frame::text(Payload::Owned(reply::ping(crate::clock::now_millis()))))
            }
        }
        // Flushing waits for a slow client; a close request interrupts it, and the unwritten
        // bytes stay buffered ahead of the close frame. A flush that completes at once (the
        // common case) leaves the close checks to the top of the loop.
        tokio::select! {
            biased;
            flushed = ws.flush() => match flushed {
                Err(_) => return,
                Ok(()) => shared.metrics.observe_write(&mut waited_since),
            },
            code = &mut closed => break Some((code, outbound.close_reason(code))),
            _ = &mut shutdown => break Some((CloseCode::GoingAway, CloseCode::GoingAway.reason().to_owned())),
        }
    };
    if let Some((code, reason)) = closing {
        shared
            .metrics
            .connections_closed
            .with_label_values(&[&code.as_u16().to_string()])
            .inc();
        ws.frame(Frame::close(code.as_u16(), close_reason(&reason)));
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
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
