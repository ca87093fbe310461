//! cdc-gateway: Kafka change-data-capture events to filtered WebSocket and SSE subscriptions.
//! "Protocol section N" in the module docs is a section of docs/protocol.md.
//!
//! The data path, one module per stage, dependencies pointing one way:
//! [`ingest`] (assignment, decode) -> [`event`] -> [`index`] (topics, filters) -> [`fanout`]
//! (serialize once, bounded queues; `history` and `snapshot` beside it) -> `hub` (the shared
//! state) -> `connection` (admission, authorization, subscription for both transports) ->
//! `ws` and `sse` (the transports) -> `http` (the port) -> [`gateway`] (assembly). Below them
//! all: [`config`], [`position`] (Kafka positions as clients see them), [`protocol`] (the wire
//! format), [`outbound`] (one connection's queue), [`metrics`] and `health`. [`shutdown`] ends
//! it in order; [`demo`] runs it on a mock cluster.

// Without the `kafka` feature nothing runs the transports: only the parsers and the fan-out
// are used (by the fuzz targets), so unused code is expected there.
#![cfg_attr(not(feature = "kafka"), allow(dead_code))]

pub mod auth;
pub(crate) mod clock;
pub mod config;
pub(crate) mod connection;
#[cfg(feature = "kafka")]
pub mod demo;
pub mod event;
pub mod fanout;
#[cfg(feature = "kafka")]
pub mod gateway;
pub(crate) mod health;
pub(crate) mod history;
pub(crate) mod http;
pub(crate) mod http_client;
pub(crate) mod hub;
pub mod index;
pub mod ingest;
pub(crate) mod jwks;
pub mod metrics;
pub mod outbound;
pub mod position;
pub(crate) mod presence;
pub mod protocol;
pub(crate) mod queue;
pub mod shutdown;
pub(crate) mod sse;
pub mod tables;
pub(crate) mod tls;
pub(crate) mod ws;

#[cfg(test)]
mod architecture;
