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

use std::collections::HashSet;
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
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::auth::Grant;
use crate::event::GatewayTopic;
use crate::gateway::Shared;
use crate::index::Filter;
use crate::outbound::Outbound;
use crate::position::{to_event_id, Position, Resolver};
use crate::protocol::data::data_message_position;
use crate::protocol::ErrorCode;
use crate::queue;

/// Data messages taken from the queue per write.
const BATCH: usize = 256;
/// Chunks waiting for hyper to write them; the queue in the index is the real buffer.
const CHUNKS: usize = 2;

/// A request problem, answered before the stream starts.
#[derive(Debug, PartialEq)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.as_str(),
            message: message.into(),
        }
    }

    fn bad(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

/// What a stream subscribes to, read from the request.
#[derive(Debug)]
struct StreamRequest {
    /// Each topic with its filter (the request's, confined by the token's claims).
    topics: Vec<(String, Filter)>,
    since: Option<Position>,
    snapshot: bool,
    /// When the token expires; the stream ends then.
    expires_in: Option<Duration>,
}

/// Answers `GET /sse`.
pub fn stream(
    request: &Request<Incoming>,
    shared: Arc<Shared>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let origin = request
        .headers()
        .get(hyper::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let allowed = &shared.settings.allowed_origins;
    let cors = match &origin {
        _ if allowed.is_empty() => Some("*".to_owned()),
        Some(origin) if allowed.iter().any(|a| a == origin) => Some(origin.clone()),
        Some(_) => None,
        // Not a browser's cross-origin request: nothing to allow.
        None => Some(String::new()),
    };
    let admitted = match cors {
        None => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "origin not allowed",
        )),
        Some(_) if shared.shutdown.is_cancelled() => Err(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "SHUTTING_DOWN",
            message: "the gateway is shutting down".into(),
        }),
        Some(_) => parse(request, &shared).and_then(|parsed| {
            Arc::clone(&shared.connection_slots)
                .try_acquire_owned()
                .map(|slot| (parsed, slot))
                .map_err(|_| {
                    Refusal::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        ErrorCode::RateLimited,
                        "too many connections",
                    )
                })
        }),
    };
    let (parsed, slot) = match admitted {
        Ok(pair) => pair,
        Err(refusal) => {
            shared
                .metrics
                .error_replies
                .with_label_values(&[refusal.code])
                .inc();
            let body = serde_json::json!({"code": refusal.code, "message": refusal.message});
            return crate::http::json_response(refusal.status, &body).map(|b| b.boxed());
        }
    };
    let (chunks, body) = mpsc::channel(CHUNKS);
    let tracker = shared.sessions.clone();
    tracker.spawn(run(parsed, shared, slot, chunks));
    let mut response = Response::builder()
        .header(hyper::header::CONTENT_TYPE, "text/event-stream")
        .header(hyper::header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no");
    if let Some(origin) = cors.filter(|o| !o.is_empty()) {
        response = response.header(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    response
        .body(SseBody { chunks: body }.boxed())
        .expect("static response parts are valid")
}

/// Reads the query string and `Last-Event-ID`.
fn parse(request: &Request<Incoming>, shared: &Shared) -> Result<StreamRequest, Refusal> {
    let max_topics = shared.settings.max_subscriptions;
    let grant = match &shared.verifier {
        None => None,
        Some(verifier) => {
            let token = crate::auth::request_token(request).ok_or_else(|| {
                Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthenticated,
                    "a token is required: `Authorization: Bearer <JWT>` or `token=<JWT>`",
                )
            })?;
            Some(verifier.verify(&token).map_err(|e| {
                Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthenticated,
                    e.to_string(),
                )
            })?)
        }
    };
    let query = request.uri().query().unwrap_or_default();
    let mut topics: Vec<String> = Vec::new();
    let mut filters: Option<String> = None;
    let mut since: Option<String> = None;
    let mut snapshot = false;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "topic" => {
                if let Err(why) = GatewayTopic::parse(&value) {
                    return Err(Refusal::bad(
                        ErrorCode::InvalidTopic,
                        format!("{value}: {why}"),
                    ));
                }
                if !topics.iter().any(|t| *t == value) {
                    topics.push(value.into_owned());
                }
            }
            "filters" => filters = Some(value.into_owned()),
            "since" => since = Some(value.into_owned()),
            "snapshot" => snapshot = matches!(value.as_ref(), "1" | "true"),
            // `token` was read above; unknown parameters are ignored, as a URL's extra
            // parameters usually are.
            _ => {}
        }
    }
    if topics.is_empty() {
        return Err(Refusal::bad(
            ErrorCode::InvalidMessage,
            "at least one `topic` parameter is required",
        ));
    }
    if topics.len() > max_topics {
        return Err(Refusal::bad(
            ErrorCode::TooManySubscriptions,
            format!("at most {max_topics} topics per stream"),
        ));
    }
    let filters: Option<Value> = match filters {
        None => None,
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
            Refusal::bad(
                ErrorCode::InvalidFilter,
                format!("`filters` is not JSON: {e}"),
            )
        })?),
    };
    let topics = topics
        .into_iter()
        .map(|topic| {
            let filter = match &grant {
                Some(grant) if !grant.allows(&topic) => {
                    return Err(Refusal::new(
                        StatusCode::FORBIDDEN,
                        ErrorCode::Forbidden,
                        format!("{topic}: the token's `topics` claim does not cover it"),
                    ))
                }
                Some(grant) => grant.confine(&topic, filters.as_ref()),
                None => Filter::compile(filters.as_ref()),
            }
            .map_err(|e| Refusal::bad(ErrorCode::InvalidFilter, e.to_string()))?;
            Ok((topic, filter))
        })
        .collect::<Result<Vec<_>, Refusal>>()?;
    // `Last-Event-ID` is what a reconnecting EventSource sends; it wins over the URL's `since`.
    let last_event_id = request
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{0}").to_owned());
    let since = match last_event_id.or(since) {
        None => None,
        Some(text) if text.is_empty() => None,
        Some(text) => Some(
            Resolver::new(&shared.dispatched.snapshot())
                .event_id(&text)
                .map_err(|e| Refusal::bad(ErrorCode::InvalidMessage, e.to_string()))?,
        ),
    };
    Ok(StreamRequest {
        topics,
        since,
        snapshot,
        expires_in: grant.as_ref().map(Grant::remaining),
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
    shared: Arc<Shared>,
    _slot: OwnedSemaphorePermit,
    chunks: mpsc::Sender<Bytes>,
) {
    let id = shared.next_connection_id();
    let (outbound, mut queue) = Outbound::new(id, shared.settings.outbound_queue);
    shared.metrics.connections_active.inc();
    shared.metrics.connections_total.inc();
    let mut stream = Stream {
        shared: Arc::clone(&shared),
        outbound,
        topics: HashSet::new(),
        position: Position::new(),
    };
    let expires_in = request.expires_in;
    if stream.open(request).await {
        let pump = stream.pump(&mut queue, &chunks);
        match expires_in {
            // The token's end is the stream's end; the client reconnects with a fresh one.
            Some(left) => {
                let _ = tokio::time::timeout(left, pump).await;
            }
            None => pump.await,
        }
    }
    drop(stream);
    shared.metrics.connections_active.dec();
}

struct Stream {
    shared: Arc<Shared>,
    outbound: Arc<Outbound>,
    topics: HashSet<String>,
    position: Position,
}

impl Stream {
    /// Joins every topic in one step through the consumer task: the acks, snapshot rows and
    /// missed events come through the queue, ahead of the live events.
    async fn open(&mut self, request: StreamRequest) -> bool {
        let topics: Vec<String> = request.topics.iter().map(|(t, _)| t.clone()).collect();
        let since = request.since.clone();
        let Some(joined) = self
            .shared
            .join(
                request.topics,
                &self.outbound,
                request.since,
                request.snapshot,
                None,
            )
            .await
        else {
            return false;
        };
        // The position a WebSocket client would keep: where it resumed from when the missed
        // events follow, else the ack's.
        self.position = match (joined.recovered, since) {
            (Some(true), Some(since)) => since,
            _ => joined.position,
        };
        for topic in topics {
            self.shared.metrics.subscriptions_active.inc();
            self.topics.insert(topic);
        }
        self.shared
            .metrics
            .topics_active
            .set(self.shared.index.topic_count() as i64);
        true
    }

    /// Moves data messages from the queue to the response until the client goes, the gateway
    /// shuts down, or the slow-client policy closes the stream.
    async fn pump(&mut self, queue: &mut queue::Receiver, chunks: &mpsc::Sender<Bytes>) {
        let heartbeat_every = self
            .shared
            .settings
            .ping_interval
            .max(Duration::from_secs(1));
        let shutdown_token = self.shared.shutdown.child_token();
        let outbound = Arc::clone(&self.outbound);
        let closed = outbound.closed();
        let shutdown = shutdown_token.cancelled();
        tokio::pin!(closed, shutdown);
        let mut batch: Vec<Bytes> = Vec::new();
        loop {
            let chunk = tokio::select! {
                biased;
                _ = &mut closed => return,
                _ = &mut shutdown => return,
                _ = chunks.closed() => return,
                received = queue.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        return;
                    }
                    self.events(&mut batch)
                }
                _ = tokio::time::sleep(heartbeat_every) => Bytes::from_static(b": keep-alive\n\n"),
            };
            tokio::select! {
                biased;
                sent = chunks.send(chunk) => if sent.is_err() { return },
                _ = &mut closed => return,
                _ = &mut shutdown => return,
            }
        }
    }

    /// Formats a batch of messages as SSE entries: data messages as `event: data` with the
    /// position they raise, the others (acks, `synced`) as events of their type.
    fn events(&mut self, batch: &mut Vec<Bytes>) -> Bytes {
        let mut out = BytesMut::with_capacity(batch.iter().map(|m| m.len() + 64).sum());
        for message in batch.drain(..) {
            let kind = [&b"ack"[..], b"synced", b"error"].into_iter().find(|kind| {
                message.strip_prefix(br#"{"type":""#).is_some_and(|rest| {
                    rest.starts_with(kind) && rest.get(kind.len()) == Some(&b'"')
                })
            });
            if let Some(kind) = kind {
                out.put_slice(b"event: ");
                out.put_slice(kind);
                out.put_slice(b"\ndata: ");
                out.put_slice(&message);
                out.put_slice(b"\n\n");
                continue;
            }
            if let Some(at) = data_message_position(&message) {
                let offset = self.position.entry(at.key()).or_insert(at.offset);
                *offset = (*offset).max(at.offset);
            }
            out.put_slice(b"event: data\nid: ");
            out.put_slice(to_event_id(&self.position).as_bytes());
            out.put_slice(b"\ndata: ");
            out.put_slice(&message);
            out.put_slice(b"\n\n");
        }
        out.freeze()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.shared
            .release_subscriptions(self.outbound.id(), self.topics.drain());
    }
}
