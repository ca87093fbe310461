//! Kafka -> fan-out: the consumer ([`Ingest`]) and the decoders of the source envelopes
//! ([`decode`]). Only the consumer needs librdkafka (the `kafka` feature, on by default):
//! without it the crate still builds its parsers, which is what the fuzz targets link.

#[cfg(feature = "kafka")]
mod assignment;
#[cfg(feature = "kafka")]
mod consumer;
#[cfg(feature = "kafka")]
mod context;
#[cfg(feature = "kafka")]
mod dead_letter;
pub mod decode;
#[cfg(feature = "kafka")]
pub(crate) mod presence;
#[cfg(feature = "kafka")]
mod registry;
#[cfg(feature = "kafka")]
mod warmup;

#[cfg(feature = "kafka")]
use consumer::kafka_client;
#[cfg(feature = "kafka")]
pub use consumer::{GatewayConsumer, Ingest, IngestError};
