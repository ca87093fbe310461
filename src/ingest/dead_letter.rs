//! Copies undecodable records to the dead-letter topic with headers saying where they came
//! from and why they failed. A failed copy is counted and logged, never retried in line: the
//! consumer must not stall on bad input.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::decode::DecodeError;
use crate::config::Config;
use crate::event::SourcePosition;
use crate::metrics::Metrics;

const SEND_TIMEOUT: Duration = Duration::from_secs(5);

pub struct DeadLetter {
    producer: FutureProducer,
    topic: String,
    metrics: Arc<Metrics>,
}

impl DeadLetter {
    pub fn new(config: &Config, topic: &str, metrics: Arc<Metrics>) -> Result<Self, KafkaError> {
        // Connection properties (security, SASL) apply to the producer too; consumer-only
        // ones would make librdkafka warn, so only those are skipped.
        let client = super::kafka_client(
            config,
            |client| {
                client
                    .set("client.id", "cdc-gateway-dead-letter")
                    .set("message.timeout.ms", "5000");
            },
            |key| !is_consumer_only(key),
        );
        Ok(Self {
            producer: client.create()?,
            topic: topic.to_owned(),
            metrics,
        })
    }

    pub async fn send(
        &self,
        source_topic: &str,
        position: SourcePosition,
        error: &DecodeError,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    ) {
        let (partition, offset, detail) = (
            position.partition.to_string(),
            position.offset.to_string(),
            error.to_string(),
        );
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "cdc-gateway-error",
                value: Some(error.reason()),
            })
            .insert(Header {
                key: "cdc-gateway-error-detail",
                value: Some(&detail),
            })
            .insert(Header {
                key: "cdc-gateway-source-topic",
                value: Some(source_topic),
            })
            .insert(Header {
                key: "cdc-gateway-source-partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "cdc-gateway-source-offset",
                value: Some(&offset),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = key.as_deref() {
            record = record.key(key);
        }
        if let Some(value) = value.as_deref() {
            record = record.payload(value);
        }
        match self.producer.send(record, SEND_TIMEOUT).await {
            Ok(_) => self
                .metrics
                .dead_letter
                .with_label_values(&["written"])
                .inc(),
            Err((e, _)) => {
                self.metrics
                    .dead_letter
                    .with_label_values(&["failed"])
                    .inc();
                tracing::warn!(topic = self.topic, "dead-letter copy failed: {e}");
            }
        }
    }
}

fn is_consumer_only(key: &str) -> bool {
    key.starts_with("fetch.")
        || key.starts_with("auto.")
        || key.starts_with("enable.auto")
        || matches!(
            key,
            "group.id"
                | "session.timeout.ms"
                | "heartbeat.interval.ms"
                | "isolation.level"
                | "max.poll.interval.ms"
        )
}
