//! What /readyz and /health report: Kafka connectivity and assignment (fed by the consumer's
//! statistics and rebalance callbacks), consumer lag, and whether shutdown has begun. Kept
//! apart from the consumer so the HTTP side reads plain values and never touches librdkafka.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::metrics::Metrics;

/// A source partition, `topic/partition`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Partition {
    pub topic: String,
    pub partition: i32,
}

pub struct Health {
    metrics: Arc<Metrics>,
    kafka_connected: AtomicBool,
    shutting_down: AtomicBool,
    assignment: Mutex<Vec<Partition>>,
    lag: Mutex<BTreeMap<Partition, i64>>,
}

#[derive(Debug, Serialize)]
pub struct KafkaStatus {
    pub connected: bool,
    pub assigned_partitions: Vec<Partition>,
    /// `"topic/partition"` -> messages behind the high watermark.
    pub lag: BTreeMap<String, i64>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            kafka_connected: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            assignment: Mutex::default(),
            lag: Mutex::default(),
        }
    }

    pub fn set_kafka_connected(&self, connected: bool) {
        if self.kafka_connected.swap(connected, Ordering::AcqRel) != connected {
            if connected {
                tracing::info!("Kafka connection up");
            } else {
                tracing::warn!("Kafka unreachable: all broker connections are down");
            }
        }
        self.metrics.kafka_connected.set(i64::from(connected));
        self.refresh_ready();
    }

    pub fn set_assignment(&self, mut partitions: Vec<Partition>) {
        partitions.sort();
        self.metrics
            .assigned_partitions
            .set(partitions.len() as i64);
        *self.assignment.lock().unwrap_or_else(|e| e.into_inner()) = partitions;
        self.refresh_ready();
    }

    pub fn set_lag(&self, lag: BTreeMap<Partition, i64>) {
        for (p, value) in &lag {
            self.metrics
                .consumer_lag
                .with_label_values(&[&p.topic, &p.partition.to_string()])
                .set(*value);
        }
        *self.lag.lock().unwrap_or_else(|e| e.into_inner()) = lag;
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.refresh_ready();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// `Ok` when ready, else why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.is_shutting_down() {
            Err("shutting down")
        } else if !self.kafka_connected.load(Ordering::Acquire) {
            Err("Kafka is unreachable")
        } else if self
            .assignment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            Err("waiting for a partition assignment")
        } else {
            Ok(())
        }
    }

    pub fn kafka(&self) -> KafkaStatus {
        KafkaStatus {
            connected: self.kafka_connected.load(Ordering::Acquire),
            assigned_partitions: self
                .assignment
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            lag: self
                .lag
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(p, lag)| (format!("{}/{}", p.topic, p.partition), *lag))
                .collect(),
        }
    }

    fn refresh_ready(&self) {
        self.metrics.ready.set(i64::from(self.readiness().is_ok()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_kafka_an_assignment_and_no_shutdown() {
        let health = Health::new(Arc::new(Metrics::new()));
        assert_eq!(health.readiness(), Err("Kafka is unreachable"));
        health.set_kafka_connected(true);
        assert_eq!(
            health.readiness(),
            Err("waiting for a partition assignment")
        );
        health.set_assignment(vec![Partition {
            topic: "cdc.events".into(),
            partition: 0,
        }]);
        assert_eq!(health.readiness(), Ok(()));
        health.set_kafka_connected(false);
        assert!(health.readiness().is_err());
        health.set_kafka_connected(true);
        health.begin_shutdown();
        assert_eq!(health.readiness(), Err("shutting down"));
    }
}
