//! The HTTP side of the one listening port: accept loop, router, and the small JSON endpoints.
//! `/ws` hands over to the WebSocket module and `/sse` to the event-stream module; everything
//! else answers here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::hub::{HttpSlot, Hub, Peer};
use crate::protocol::ErrorCode;

/// Accepts connections until `stop` fires. Open keep-alive HTTP connections are then told to
/// finish their current request; WebSocket sessions are closed by their own shutdown path.
pub async fn serve(listener: TcpListener, shared: Arc<Hub>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Sockets that are not a session or stream yet are bounded apart: the permit goes
        // when the HTTP connection ends, or when it upgrades to a WebSocket.
        let Ok(http_slot) = Arc::clone(&shared.http_slots).try_acquire_owned() else {
            shared
                .metrics
                .connections_refused
                .with_label_values(&["http_connections"])
                .inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tokio::spawn(async move {
            let slot = HttpSlot::new(http_slot);
            let Some(tls) = shared.tls.clone() else {
                return serve_connection(stream, peer, slot, shared, stop).await;
            };
            // The handshake is bounded like the request head that follows it.
            let timeout = shared.settings.header_read_timeout;
            match tokio::time::timeout(timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(stream, peer, slot, shared, stop).await,
                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Serves the HTTP requests of one connection (and hands it over when it upgrades).
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    slot: HttpSlot,
    shared: Arc<Hub>,
    stop: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let header_read_timeout = shared.settings.header_read_timeout;
    let service = service_fn(move |mut request: Request<Incoming>| {
        let shared = Arc::clone(&shared);
        request.extensions_mut().insert(Peer(peer.ip()));
        request.extensions_mut().insert(slot.clone());
        async move { Ok::<_, Infallible>(route(request, shared).await) }
    });
    // hyper reads no timer unless given one: without it a client that trickles its request
    // head (slowloris) or idles on keep-alive holds its socket for ever.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Every response body: whole JSON or text, or an endless event stream (`/sse`).
pub type Body = BoxBody<Bytes, Infallible>;

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// The demo page and the scripts it loads (under `cdc-gateway demo` only), bundled into the
/// binary: no CDN. `/client.js` is cdc-gateway-client's build, committed as
/// `src/demo/client.js`; the client's tests check it equals a fresh build.
fn demo_asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/" => Some((
            "text/html; charset=utf-8",
            include_bytes!("demo/index.html"),
        )),
        "/demo.js" => Some((JAVASCRIPT, include_bytes!("demo/demo.js"))),
        "/client.js" => Some((JAVASCRIPT, include_bytes!("demo/client.js"))),
        _ => None,
    }
}

async fn route(request: Request<Incoming>, shared: Arc<Hub>) -> Response<Body> {
    let asset = (shared.demo_page && request.method() == Method::GET)
        .then(|| demo_asset(request.uri().path()))
        .flatten();
    if let Some((content_type, body)) = asset {
        return Response::builder()
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from_static(body)).boxed())
            .expect("static response parts are valid");
    }
    match request.uri().path() {
        _ if request.method() != Method::GET => crate::protocol::json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"code": ErrorCode::MethodNotAllowed, "message": "only GET is served"}),
        ),
        "/ws" => crate::ws::upgrade(request, shared).await,
        "/sse" => return crate::sse::stream(&request, shared).await,
        "/healthz" => crate::protocol::json_response(StatusCode::OK, &json!({"status": "ok"})),
        "/readyz" => match shared.health.readiness() {
            Ok(()) => crate::protocol::json_response(StatusCode::OK, &json!({"ready": true})),
            Err(reason) => crate::protocol::json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"ready": false, "reason": reason}),
            ),
        },
        "/health" => health(&shared),
        "/metrics" => Response::builder()
            .header(
                hyper::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(Full::new(Bytes::from(shared.metrics.render())))
            .expect("static response parts are valid"),
        _ => crate::protocol::json_response(
            StatusCode::NOT_FOUND,
            &json!({"code": ErrorCode::NotFound, "message": "no such endpoint"}),
        ),
    }
    .map(BodyExt::boxed)
}

fn health(shared: &Hub) -> Response<Full<Bytes>> {
    let kafka = shared.health.kafka();
    let status = match shared.health.readiness() {
        // Ready, but some broker is hung: records from it wait (readiness stays, see
        // docs/operating.md: every replica shares the brokers).
        Ok(()) if kafka.stalled => "degraded",
        Ok(()) => "ok",
        Err(_) if shared.health.is_shutting_down() => "shutting_down",
        Err(_) => "degraded",
    };
    let body = json!({
        "status": status,
        "active_connections": shared.metrics.connections_active.get(),
        "subscriptions": shared.metrics.subscriptions_active.get(),
        "topics": shared.index.topic_count(),
        "kafka": kafka,
    });
    crate::protocol::json_response(StatusCode::OK, &body)
}
