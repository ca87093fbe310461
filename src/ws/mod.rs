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
use crate::gateway::Shared;
use crate::protocol::close::CloseCode;
use session::Access;

/// Per-connection limits and timers, taken from the configuration.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub max_subscriptions: usize,
    pub max_message_size: usize,
    pub outbound_queue: usize,
    pub idle_timeout: Duration,
    pub ping_interval: Duration,
    /// `None`: no JSON heartbeats.
    pub app_ping_interval: Option<Duration>,
    pub rate_limit: u32,
    pub rate_burst: u32,
    /// Under `--auth jwt`: how long a connection without a token has to send `auth`.
    pub auth_timeout: Duration,
    /// Empty: any origin.
    pub allowed_origins: Vec<String>,
}

/// Answers `GET /ws`.
pub fn upgrade(mut request: Request<Incoming>, shared: Arc<Shared>) -> Response<Full<Bytes>> {
    if !fastwebsockets::upgrade::is_upgrade_request(&request) {
        return crate::http::json_response(
            StatusCode::UPGRADE_REQUIRED,
            &serde_json::json!({"code": "INVALID_MESSAGE", "message": "GET /ws expects a WebSocket upgrade"}),
        );
    }
    if shared.shutdown.is_cancelled() {
        return crate::http::json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"code": "SHUTTING_DOWN", "message": "the gateway is shutting down"}),
        );
    }
    let origin_allowed = {
        let allowed = &shared.settings.allowed_origins;
        allowed.is_empty()
            || request
                .headers()
                .get(hyper::header::ORIGIN)
                .and_then(|o| o.to_str().ok())
                .is_some_and(|origin| allowed.iter().any(|a| a == origin))
    };
    let slot = Arc::clone(&shared.connection_slots)
        .try_acquire_owned()
        .ok();
    // A token in the upgrade request is checked now; without one, the session waits for an
    // `auth` message (protocol section 6).
    let access = match (&shared.verifier, crate::auth::request_token(&request)) {
        (None, _) => Ok(Access::Open),
        (Some(_), None) => Ok(Access::Pending(
            tokio::time::Instant::now() + shared.settings.auth_timeout,
        )),
        (Some(verifier), Some(token)) => verifier.verify(&token).map(Access::Granted),
    };
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(pair) => pair,
        Err(e) => {
            return crate::http::json_response(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"code": "INVALID_MESSAGE", "message": format!("bad upgrade request: {e}")}),
            )
        }
    };
    let tracker = shared.sessions.clone();
    tracker.spawn(async move {
        let ws = match upgrade.await {
            Ok(ws) => ws,
            Err(e) => return tracing::debug!("upgrade failed: {e}"),
        };
        match (origin_allowed, slot, access) {
            (false, _, _) => refuse(ws, &shared, CloseCode::Policy, "origin not allowed").await,
            (true, None, _) => refuse(ws, &shared, CloseCode::Policy, "too many connections").await,
            (true, Some(_), Err(AuthError::Expired)) => {
                refuse(ws, &shared, CloseCode::TokenExpired, "token expired").await
            }
            (true, Some(_), Err(e)) => {
                refuse(ws, &shared, CloseCode::Unauthorized, &e.to_string()).await
            }
            (true, Some(slot), Ok(access)) => session::run(ws, shared, access, slot).await,
        }
    });
    response.map(|_| Full::new(Bytes::new()))
}

/// Completes the handshake only to close with `code` and a reason.
async fn refuse(
    mut ws: WebSocket<TokioIo<hyper::upgrade::Upgraded>>,
    shared: &Shared,
    code: CloseCode,
    reason: &str,
) {
    shared
        .metrics
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
