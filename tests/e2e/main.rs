//! End-to-end tests: the gateway binary against a real tansu broker, driven by an rdkafka
//! producer and tokio-tungstenite clients. One test binary, so the suite links once.

mod auth;
mod backpressure;
mod cli;
mod deploy;
mod http;
mod ingest;
mod schemas;
mod session;
mod sse;
mod support;
