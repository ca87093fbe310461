//! Copies undecodable records to the dead-letter topic with headers saying where they came
//! from and why they failed. A copy is handed to the producer and its delivery report awaited
//! on a task of its own, at most `IN_FLIGHT` at a time: the consumer never waits for the
//! dead-letter topic, even while it is unreachable. A copy beyond that bound, or one that
//! fails, is counted and logged, never retried in line.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Semaphore;

use super::decode::DecodeError;
use crate::config::Config;
use crate::event::SourcePosition;
use crate::metrics::Metrics;

const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Copies awaiting their delivery report; more are skipped (`result="overflow"`).
const IN_FLIGHT: usize = 1_000;

pub struct DeadLetter {
    producer: FutureProducer,
    topic: String,
    metrics: Arc<Metrics>,
    in_flight: Arc<Semaphore>,
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
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        })
    }

    pub fn send(
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
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            self.count("overflow");
            return;
        };
        let delivery = match self.producer.send_result(record) {
            Ok(delivery) => delivery,
            Err((e, _)) => {
                drop(permit);
                return self.failed(&e);
            }
        };
        let (metrics, topic) = (Arc::clone(&self.metrics), self.topic.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = tokio::time::timeout(SEND_TIMEOUT * 2, delivery).await;
            let result = match outcome {
                Ok(Ok(Ok(_))) => "written",
                Ok(Ok(Err((e, _)))) => {
                    tracing::warn!(topic, "dead-letter copy failed: {e}");
                    "failed"
                }
                _ => {
                    tracing::warn!(topic, "dead-letter copy got no delivery report");
                    "failed"
                }
            };
            metrics.dead_letter.with_label_values(&[result]).inc();
        });
    }

    fn count(&self, result: &str) {
        self.metrics.dead_letter.with_label_values(&[result]).inc();
    }

    fn failed(&self, e: &KafkaError) {
        self.count("failed");
        tracing::warn!(topic = self.topic, "dead-letter copy failed: {e}");
    }
}

pub(super) fn is_consumer_only(key: &str) -> bool {
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
