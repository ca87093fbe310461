//! WebSocket endpoint: admission (origin, connection limit, shutdown, a token in the request)
//! at upgrade time, then one session per connection. Rejected upgrades still complete the
//! handshake so the client sees a close code (1008, 4001) and a reason rather than a bare HTTP
//! error.

mod coalesce;
mod session;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, WebSocket};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::auth::AuthError;
use crate::connection::{admit, Connection, Refusal, TokenLater};
use crate::hub::Hub;
use crate::protocol::close::CloseCode;
use crate::protocol::ErrorCode;

/// Answers `GET /ws`.
pub async fn upgrade(mut request: Request<Incoming>, hub: Arc<Hub>) -> Response<Full<Bytes>> {
    if !fastwebsockets::upgrade::is_upgrade_request(&request) {
        return crate::protocol::json_response(
            StatusCode::UPGRADE_REQUIRED,
            &serde_json::json!({"code": ErrorCode::InvalidMessage, "message": "GET /ws expects a WebSocket upgrade"}),
        );
    }
    // A token in the upgrade request is checked now; without one, the session waits for an
    // `auth` message (protocol section 7.1).
    if let (Some(verifier), Some(token)) = (&hub.verifier, crate::auth::request_token(&request)) {
        verifier.prepare(&token).await;
    }
    let admitted = admit(&hub, &request, TokenLater::Allowed);
    if matches!(admitted, Err(Refusal::ShuttingDown)) {
        return crate::protocol::json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"code": ErrorCode::ShuttingDown, "message": Refusal::ShuttingDown.to_string()}),
        );
    }
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(pair) => pair,
        Err(e) => {
            return crate::protocol::json_response(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"code": ErrorCode::InvalidMessage, "message": format!("bad upgrade request: {e}")}),
            )
        }
    };
    let tracker = hub.sessions.clone();
    tracker.spawn(async move {
        let ws = match upgrade.await {
            Ok(ws) => ws,
            Err(e) => return tracing::debug!("upgrade failed: {e}"),
        };
        match admitted {
            // A task of its own: what this one held for the upgrade and the admission is
            // not kept by a session that may stay idle for hours.
            Ok(admitted) => {
                let session = session::run(ws, Connection::open(Arc::clone(&hub), admitted));
                hub.sessions.spawn(session);
            }
            Err(refusal) => {
                let code = match &refusal {
                    Refusal::Token(AuthError::Expired) => CloseCode::TokenExpired,
                    Refusal::Token(_) | Refusal::TokenRequired => CloseCode::Unauthorized,
                    Refusal::ShuttingDown => CloseCode::GoingAway,
                    Refusal::Origin
                    | Refusal::TooManyConnections
                    | Refusal::TooManyPendingAuth
                    | Refusal::TooManyFromAddress => CloseCode::Policy,
                };
                // Boxed: a refusal's state is not held by the sessions that were admitted.
                Box::pin(refuse(ws, &hub, code, &refusal.to_string())).await
            }
        }
    });
    response.map(|_| Full::new(Bytes::new()))
}

/// Completes the handshake only to close with `code` and a reason.
async fn refuse(
    mut ws: WebSocket<TokioIo<hyper::upgrade::Upgraded>>,
    hub: &Hub,
    code: CloseCode,
    reason: &str,
) {
    hub.metrics
        .connections_closed
        .with_label_values(&[&code.as_u16().to_string()])
        .inc();
    let close = Frame::close(code.as_u16(), session::close_reason(reason));
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if ws.write_frame(close).await.is_ok() {
            // Wait for the client's close reply so the close frame is not lost to a reset.
            let _ = ws.read_frame().await;
        }
    })
    .await;
}
