//! End-to-end tests: the gateway binary against a real tansu broker, driven by an rdkafka
//! producer and tokio-tungstenite clients: ingest, delivery, backpressure, HTTP, the command
//! line. Session, SSE and auth behaviour runs in-process
//! (tests/inprocess), on librdkafka's mock cluster.

mod backpressure;
mod checker;
mod cli;
mod delivery;
mod hostile_load;
mod http;
mod ingest;
mod presence;
mod schemas;
mod support;
mod tables;
