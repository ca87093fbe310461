//! cdc-gateway: Kafka change-data-capture events to filtered WebSocket subscriptions.
//!
//! The data path, one module per stage: [`ingest`] (consumer, [`ingest::decode`]) ->
//! [`event`] -> [`index`] (topics, filters) -> [`fanout`] (serialize once, bounded queues) ->
//! [`ws`] (sessions). [`http`] serves the port, [`metrics`] and [`health`] report,
//! [`shutdown`] ends it in order, [`gateway`] wires it all from [`config`].

pub mod auth;
pub mod clock;
pub mod config;
pub mod connection;
pub mod demo;
pub mod event;
pub mod fanout;
pub mod gateway;
pub mod health;
pub mod history;
pub mod http;
pub mod hub;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod outbound;
pub mod position;
pub mod protocol;
pub mod queue;
pub mod shutdown;
pub mod snapshot;
pub mod sse;
pub mod ws;
