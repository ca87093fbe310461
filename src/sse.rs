//! Server-Sent Events (`GET /sse`): the read-only way in for dashboards, one HTTP response that
//! never ends. A stream is a connection like a WebSocket session, with its own bounded queue
//! in the index and the same slow-client policy, but its subscriptions are fixed by the URL:
//! `topic` (repeatable), `filters` (JSON, applied to every topic), `since` or the
//! `Last-Event-ID` header (`topic:partition:offset,...`), `snapshot=1`. Every request problem
//! is answered before the stream starts, with the HTTP status and the JSON error body of the
//! WebSocket protocol.
//!
//! All of a stream's topics join in one step through the consumer task, so their missed
//! events come in offset order per partition, before any live event. Each data message goes
//! out as `event: data`, with `id:` the stream's one position over all its topics (every
//! partition: the offset it resumed from, or the ack's, raised by every event delivered), so
//! a reconnecting `EventSource` sends it back as `Last-Event-ID` and can skip nothing. Before
//! any data, one `event: ack` per topic carries the same JSON as a WebSocket subscribe ack,
//! and `event: synced` follows a topic's snapshot rows (named events:
//! `EventSource.onmessage` ignores them). A comment line keeps idle streams alive through
//! proxies.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::connection::{admit, Admitted, Connection, Refusal, Since, SubscribeError, TokenLater};
use crate::hub::Hub;
use crate::index::Filter;
use crate::position::{to_event_id, Position};
use crate::protocol::data::data_message_position;
use crate::protocol::ErrorCode;
use crate::queue;

/// Data messages taken from the queue per write.
const BATCH: usize = 256;
/// Chunks waiting for hyper to write them; the queue in the index is the real buffer.
const CHUNKS: usize = 2;

/// A request problem, answered before the stream starts.
#[derive(Debug, PartialEq)]
struct Refused {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl Refused {
    fn bad(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        let (status, code) = match &refusal {
            Refusal::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ShuttingDown),
            Refusal::Origin => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            Refusal::TokenRequired | Refusal::Token(_) => {
                (StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated)
            }
            Refusal::TooManyConnections
            | Refusal::TooManyPendingAuth
            | Refusal::TooManyFromAddress => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited)
            }
        };
        Self {
            status,
            code,
            message: refusal.to_string(),
        }
    }
}

impl From<SubscribeError> for Refused {
    fn from(e: SubscribeError) -> Self {
        let status = match e.code {
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_REQUEST,
        };
        let message = match &e.topic {
            Some(topic) => format!("{topic}: {}", e.message),
            None => e.message,
        };
        Self {
            status,
            code: e.code,
            message,
        }
    }
}

/// What a stream subscribes to, read from the request.
#[derive(Debug)]
struct StreamRequest {
    /// Each topic with its filter (the request's, confined by the token's claims).
    topics: Vec<(String, Filter)>,
    since: Option<Position>,
    snapshot: bool,
}

/// Answers `GET /sse`.
pub async fn stream(
    request: &Request<Incoming>,
    hub: Arc<Hub>,
) -> Response<BoxBody<Bytes, Infallible>> {
    if let (Some(verifier), Some(token)) = (&hub.verifier, crate::auth::request_token(request)) {
        verifier.prepare(&token).await;
    }
    let opened = match admit(&hub, request, TokenLater::Refused) {
        Ok(admitted) => parse(request, &hub, &admitted)
            .await
            .map(|parsed| (admitted, parsed)),
        Err(refusal) => Err(Refused::from(refusal)),
    };
    let (admitted, parsed) = match opened {
        Ok(pair) => pair,
        Err(refused) => {
            hub.metrics
                .error_replies
                .with_label_values(&[refused.code.as_str()])
                .inc();
            let body = serde_json::json!({"code": refused.code, "message": refused.message});
            return crate::protocol::json_response(refused.status, &body).map(|b| b.boxed());
        }
    };
    // A stream counts against --max-connections (its admission took that slot), no longer
    // against the sockets that are not a session or stream yet; the connection closes when
    // the stream ends, so it never serves a request again without a slot.
    if let Some(slot) = request.extensions().get::<crate::hub::HttpSlot>() {
        slot.release();
    }
    let (chunks, body) = mpsc::channel(CHUNKS);
    let tracker = hub.sessions.clone();
    tracker.spawn(run(
        parsed,
        Connection::open(Arc::clone(&hub), admitted),
        chunks,
    ));
    let mut response = Response::builder()
        .header(hyper::header::CONTENT_TYPE, "text/event-stream")
        .header(hyper::header::CACHE_CONTROL, "no-cache")
        .header(hyper::header::CONNECTION, "close")
        .header("x-accel-buffering", "no");
    if let Some(origin) = cors_origin(request, &hub) {
        response = response.header(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    response
        .body(SseBody { chunks: body }.boxed())
        .expect("static response parts are valid")
}

/// The `Access-Control-Allow-Origin` of an admitted stream: any origin without
/// `--allowed-origins`, else the request's (admission checked it is allowed).
fn cors_origin(request: &Request<Incoming>, hub: &Hub) -> Option<String> {
    let origin = request
        .headers()
        .get(hyper::header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    match origin {
        _ if hub.settings.allowed_origins.is_empty() => Some("*".to_owned()),
        Some(origin) => Some(origin.to_owned()),
        // Not a browser's cross-origin request: nothing to allow.
        None => None,
    }
}

/// Reads the query string and `Last-Event-ID`.
async fn parse(
    request: &Request<Incoming>,
    hub: &Hub,
    admitted: &Admitted,
) -> Result<StreamRequest, Refused> {
    let max_topics = hub.settings.max_subscriptions;
    let query = request.uri().query().unwrap_or_default();
    let mut topics: Vec<String> = Vec::new();
    let mut filters: Option<String> = None;
    let mut since: Option<String> = None;
    let mut snapshot = false;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "topic" if !topics.iter().any(|t| *t == value) => topics.push(value.into_owned()),
            "topic" => {}
            "filters" => filters = Some(value.into_owned()),
            "since" => since = Some(value.into_owned()),
            "snapshot" => snapshot = matches!(value.as_ref(), "1" | "true"),
            // `token` was read at admission; unknown parameters are ignored, as a URL's extra
            // parameters usually are.
            _ => {}
        }
    }
    if topics.is_empty() {
        return Err(Refused::bad(
            ErrorCode::InvalidMessage,
            "at least one `topic` parameter is required",
        ));
    }
    if topics.len() > max_topics {
        return Err(Refused::bad(
            ErrorCode::TooManySubscriptions,
            format!("at most {max_topics} topics per stream"),
        ));
    }
    let filters: Option<Value> = match filters {
        None => None,
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
            Refused::bad(
                ErrorCode::InvalidFilter,
                format!("`filters` is not JSON: {e}"),
            )
        })?),
    };
    let topics = topics
        .into_iter()
        .map(|topic| {
            let filter = admitted.filter(&topic, filters.as_ref())?;
            Ok((topic, filter))
        })
        .collect::<Result<Vec<_>, Refused>>()?;
    // `Last-Event-ID` is what a reconnecting EventSource sends; it wins over the URL's `since`.
    let last_event_id = request
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{0}").to_owned());
    let since = match last_event_id.or(since) {
        None => None,
        Some(text) if text.is_empty() => None,
        Some(text) => Some(crate::connection::resolve(hub, Since::EventId(&text)).await?),
    };
    Ok(StreamRequest {
        topics,
        since,
        snapshot,
    })
}

/// The response body: chunks the stream task formatted.
struct SseBody {
    chunks: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// One stream, from subscription to the end of the response.
async fn run(
    request: StreamRequest,
    (connection, mut queue): (Connection, queue::Receiver),
    chunks: mpsc::Sender<Bytes>,
) {
    let expires_in = connection.token_remaining();
    let mut stream = Stream {
        connection,
        position: Position::new(),
        unsynced: if request.snapshot {
            request.topics.len()
        } else {
            0
        },
    };
    if stream.open(request, &chunks).await {
        let pump = stream.pump(&mut queue, &chunks);
        match expires_in {
            // The token's end is the stream's end; the client reconnects with a fresh one.
            Some(left) => {
                let _ = tokio::time::timeout(left, pump).await;
            }
            None => pump.await,
        }
    }
}

struct Stream {
    connection: Connection,
    /// The stream's one position over all its topics: its `id:`.
    position: Position,
    /// Topics whose snapshot has not reached `synced` yet. Until every one has, data
    /// carries no `id:`: a browser's EventSource that reconnects mid-snapshot then sends no
    /// `Last-Event-ID` and gets the whole snapshot again, where the ack's position would
    /// resume past the rows not yet sent (`recovered: true` with half a table).
    unsynced: usize,
}

impl Stream {
    /// Joins every topic in one step through the consumer task: the acks, snapshot rows and
    /// missed events come through the queue, ahead of the live events.
    async fn open(&mut self, request: StreamRequest, chunks: &mpsc::Sender<Bytes>) -> bool {
        let since = request.since.clone();
        let joined = self
            .connection
            .subscribe(request.topics, request.since, request.snapshot, None)
            .await;
        let joined = match joined {
            Ok(Some(joined)) => joined,
            // Shutting down.
            Ok(None) => return false,
            // The request was checked when parsed; what remains is a snapshot or replay
            // over the backlog budget: said as an error event, and the stream ends.
            Err(refused) => {
                self.connection
                    .hub()
                    .metrics
                    .error_replies
                    .with_label_values(&[refused.code.as_str()])
                    .inc();
                let reply = crate::protocol::reply::error(
                    refused.code,
                    &refused.message,
                    refused.topic.as_deref(),
                    None,
                );
                let mut batch = vec![Bytes::from(reply)];
                let _ = chunks.send(self.events(&mut batch)).await;
                return false;
            }
        };
        // The position a WebSocket client would keep: where it resumed from when the missed
        // events follow, else the ack's.
        self.position = match (joined.recovered, since) {
            (Some(true), Some(since)) => since,
            _ => joined.position,
        };
        true
    }

    /// Moves data messages from the queue to the response until the client goes, the gateway
    /// shuts down, or the slow-client policy closes the stream.
    async fn pump(&mut self, queue: &mut queue::Receiver, chunks: &mpsc::Sender<Bytes>) {
        let hub = Arc::clone(self.connection.hub());
        let heartbeat_every = hub.settings.ping_interval.max(Duration::from_secs(1));
        let outbound = Arc::clone(self.connection.outbound());
        // Thrown by a close request and by shutdown alike (`Outbound::closed_by`).
        let closed = outbound.closed();
        tokio::pin!(closed);
        let mut batch: Vec<Bytes> = Vec::new();
        // When the oldest data message of the chunk was queued (0: a heartbeat).
        let mut waited_since = 0;
        loop {
            let chunk = tokio::select! {
                biased;
                _ = &mut closed => return,
                _ = chunks.closed() => return,
                received = queue.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        return;
                    }
                    waited_since = queue.taken_oldest_at();
                    let chunk = self.events(&mut batch);
                    // A burst's 256 slots do not stay with an idle stream.
                    if received < BATCH {
                        batch.shrink_to(64);
                    }
                    chunk
                }
                _ = tokio::time::sleep(heartbeat_every) => Bytes::from_static(b": keep-alive\n\n"),
            };
            tokio::select! {
                biased;
                // Handed to the HTTP connection, which writes it next.
                sent = chunks.send(chunk) => match sent {
                    Err(_) => return,
                    Ok(()) => hub.metrics.observe_write(&mut waited_since),
                },
                _ = &mut closed => return,
            }
        }
    }

    /// Formats a batch of messages as SSE entries: data messages as `event: data` with the
    /// position they raise, the others (acks, `synced`, errors, `reset`) as events of their
    /// type.
    fn events(&mut self, batch: &mut Vec<Bytes>) -> Bytes {
        let mut out = BytesMut::with_capacity(batch.iter().map(|m| m.len() + 64).sum());
        for message in batch.drain(..) {
            let kind = [&b"ack"[..], b"synced", b"error", b"reset"]
                .into_iter()
                .find(|kind| {
                    message.strip_prefix(br#"{"type":""#).is_some_and(|rest| {
                        rest.starts_with(kind) && rest.get(kind.len()) == Some(&b'"')
                    })
                });
            if let Some(kind) = kind {
                out.put_slice(b"event: ");
                out.put_slice(kind);
                if kind == b"synced" && self.unsynced > 0 {
                    self.unsynced -= 1;
                    if self.unsynced == 0 {
                        // The snapshot is whole: from here a reconnect resumes.
                        out.put_slice(b"\nid: ");
                        out.put_slice(to_event_id(&self.position).as_bytes());
                    }
                }
                out.put_slice(b"\ndata: ");
                out.put_slice(&message);
                out.put_slice(b"\n\n");
                continue;
            }
            if let Some(at) = data_message_position(&message) {
                let offset = self.position.entry(at.key()).or_insert(at.offset);
                *offset = (*offset).max(at.offset);
            }
            out.put_slice(b"event: data");
            if self.unsynced == 0 {
                out.put_slice(b"\nid: ");
                out.put_slice(to_event_id(&self.position).as_bytes());
            }
            out.put_slice(b"\ndata: ");
            out.put_slice(&message);
            out.put_slice(b"\n\n");
        }
        out.freeze()
    }
}
