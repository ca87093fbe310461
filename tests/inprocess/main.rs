//! The in-process tier: session, SSE and auth behaviour through the gateway's injectable entry
//! point (`Gateway::new(config, pages).run(listener, shutdown)`) on librdkafka's embedded mock
//! cluster: no broker process, no gateway process, so these tests start in milliseconds. The
//! clients are still independent implementations (tokio-tungstenite, a raw-socket SSE
//! reader). Ingest, delivery and the deploy files run against tansu in tests/e2e.

#[path = "../e2e/support.rs"]
mod real;
mod support;

mod auth;
mod hostile;
mod retention;
mod session;
mod sse;
