//! librdkafka callbacks: statistics (broker state -> readiness, consumer lag -> metrics) and
//! errors (all brokers down -> not ready at once).

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

use crate::health::{Health, Partition};

pub struct GatewayContext {
    health: Arc<Health>,
}

impl GatewayContext {
    pub fn new(health: Arc<Health>) -> Self {
        Self { health }
    }
}

impl ClientContext for GatewayContext {
    fn stats(&self, statistics: Statistics) {
        let connected = statistics
            .brokers
            .values()
            .any(|broker| broker.nodeid >= 0 && broker.state == "UP");
        self.health.set_kafka_connected(connected);
        let mut lag = BTreeMap::new();
        for (topic, stats) in &statistics.topics {
            for (id, partition) in &stats.partitions {
                if *id >= 0 && partition.consumer_lag >= 0 {
                    lag.insert(
                        Partition {
                            topic: topic.clone(),
                            partition: *id,
                        },
                        partition.consumer_lag,
                    );
                }
            }
        }
        self.health.set_lag(lag);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.set_kafka_connected(false);
        }
        tracing::warn!("Kafka client error: {error}: {reason}");
    }
}

/// The consumer assigns its partitions itself (no group rebalances): nothing to hook.
impl ConsumerContext for GatewayContext {}
