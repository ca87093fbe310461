//! Graceful shutdown, in the order a load balancer and the clients need it: /readyz turns 503,
//! (optionally) a delay lets the balancer notice, the listener closes, every session closes
//! with 1001, the consumer stops and commits what was dispatched. The whole drain is bounded.

use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Everything shutdown acts on.
pub struct Drain<'a> {
    pub shared: &'a Hub,
    pub delay: std::time::Duration,
    pub timeout: std::time::Duration,
    pub stop_accepting: CancellationToken,
    pub stop_consuming: CancellationToken,
    pub server: JoinHandle<()>,
    pub consumer: JoinHandle<()>,
}

pub async fn drain(drain: Drain<'_>) {
    let Drain {
        shared,
        delay,
        timeout,
        stop_accepting,
        stop_consuming,
        server,
        consumer,
    } = drain;
    tracing::info!("shutting down: /readyz now answers 503");
    shared.health.begin_shutdown();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let deadline = Instant::now() + timeout;
    stop_accepting.cancel();
    shared.shutdown.cancel();
    shared.sessions.close();
    if timeout_at(deadline, shared.sessions.wait()).await.is_err() {
        tracing::warn!("some connections did not finish closing within --drain-timeout");
    }
    stop_consuming.cancel();
    if timeout_at(deadline, consumer).await.is_err() {
        tracing::warn!("the consumer did not stop within --drain-timeout; offsets of the last records may be re-delivered");
    }
    let _ = timeout_at(deadline, server).await;
    tracing::info!("shutdown complete");
}
