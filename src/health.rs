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

/// One broker as the consumer's statistics last saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Broker {
    /// librdkafka's name for it, `host:port/id`.
    pub broker: String,
    /// librdkafka's connection state: `UP`, `DOWN`, `CONNECT`, ...
    pub state: String,
    /// Requests sent to it that await an answer.
    pub awaiting_responses: i64,
    /// Milliseconds since its connection last received anything (`None`: nothing yet).
    pub receive_idle_ms: Option<i64>,
    /// Up, with answers overdue past `--kafka-stall-timeout`: hung, not down.
    pub stalled: bool,
}

impl Broker {
    /// Whether a broker with these statistics is hung: connected, asked, and silent for
    /// longer than `timeout_ms`. A broker nobody is waiting on (fetching paused while clients
    /// pace the consumer) is idle, not hung.
    pub fn is_stalled(
        state: &str,
        awaiting: i64,
        receive_idle_ms: Option<i64>,
        timeout_ms: i64,
    ) -> bool {
        state == "UP" && awaiting > 0 && receive_idle_ms.is_some_and(|idle| idle > timeout_ms)
    }
}

pub struct Health {
    metrics: Arc<Metrics>,
    brokers: Mutex<Vec<Broker>>,
    kafka_connected: AtomicBool,
    /// False while consumption waits for the schema registry.
    schema_registry_reachable: AtomicBool,
    shutting_down: AtomicBool,
    /// The tables are read up to the partitions' starts at start-up.
    tables_building: AtomicBool,
    /// The table store cannot be written: consumption waits.
    tables_failing: AtomicBool,
    assignment: Mutex<Vec<Partition>>,
    lag: Mutex<BTreeMap<Partition, i64>>,
}

#[derive(Debug, Serialize)]
pub struct KafkaStatus {
    pub connected: bool,
    /// Some broker is up but has left requests unanswered past `--kafka-stall-timeout`.
    pub stalled: bool,
    pub brokers: Vec<Broker>,
    pub assigned_partitions: Vec<Partition>,
    /// `"topic/partition"` -> messages behind the high watermark.
    pub lag: BTreeMap<String, i64>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            brokers: Mutex::default(),
            kafka_connected: AtomicBool::new(false),
            schema_registry_reachable: AtomicBool::new(true),
            shutting_down: AtomicBool::new(false),
            tables_building: AtomicBool::new(false),
            tables_failing: AtomicBool::new(false),
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

    /// Whether the schema registry answers; while it does not, records wait for their schema.
    pub fn set_schema_registry_reachable(&self, reachable: bool) {
        self.schema_registry_reachable
            .store(reachable, Ordering::Release);
        self.metrics
            .schema_registry_waiting
            .set(i64::from(!reachable));
        self.refresh_ready();
    }

    /// The brokers as the latest statistics saw them; a change in which are stalled is
    /// logged.
    pub fn set_brokers(&self, brokers: Vec<Broker>) {
        let mut held = self.brokers.lock().unwrap_or_else(|e| e.into_inner());
        for broker in &brokers {
            let was = held
                .iter()
                .find(|b| b.broker == broker.broker)
                .is_some_and(|b| b.stalled);
            if broker.stalled && !was {
                tracing::warn!(broker = broker.broker, awaiting = broker.awaiting_responses, idle_ms = ?broker.receive_idle_ms, "Kafka broker stalled: connected, but its answers are overdue (hung or overloaded broker, or a network path that drops packets); records from it wait, nothing is lost");
            } else if was && !broker.stalled {
                tracing::info!(broker = broker.broker, "Kafka broker answers again");
            }
            let waiting = match (broker.awaiting_responses, broker.receive_idle_ms) {
                (n, Some(idle)) if n > 0 => idle as f64 / 1000.0,
                _ => 0.0,
            };
            self.metrics
                .broker_waiting
                .with_label_values(&[&broker.broker])
                .set(waiting);
        }
        self.metrics
            .brokers_stalled
            .set(brokers.iter().filter(|b| b.stalled).count() as i64);
        *held = brokers;
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

    /// Whether the start-up read of the tables is under way (progress:
    /// `cdc_gateway_table_rebuild_remaining_records`).
    pub fn set_tables_building(&self, building: bool) {
        self.tables_building.store(building, Ordering::Release);
        self.refresh_ready();
    }

    /// Whether the table store refuses writes (full, or a disk error).
    pub fn set_tables_failing(&self, failing: bool) {
        self.tables_failing.store(failing, Ordering::Release);
        self.refresh_ready();
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
        } else if !self.schema_registry_reachable.load(Ordering::Acquire) {
            Err("schema registry unreachable: records wait for their schema")
        } else if self.tables_failing.load(Ordering::Acquire) {
            Err("table store cannot be written (full or a disk error): consumption waits")
        } else if self.tables_building.load(Ordering::Acquire) {
            Err("reading the tables up to the partitions' starts (cdc_gateway_table_rebuild_remaining_records)")
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
        let brokers = self
            .brokers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        KafkaStatus {
            connected: self.kafka_connected.load(Ordering::Acquire),
            stalled: brokers.iter().any(|b| b.stalled),
            brokers,
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
    fn a_broker_is_stalled_when_up_asked_and_silent_past_the_timeout() {
        assert!(Broker::is_stalled("UP", 2, Some(20_000), 15_000));
        assert!(!Broker::is_stalled("UP", 2, Some(200), 15_000), "answering");
        assert!(
            !Broker::is_stalled("UP", 0, Some(60_000), 15_000),
            "nobody waits on it: fetching paused, idle not hung"
        );
        assert!(
            !Broker::is_stalled("DOWN", 2, Some(60_000), 15_000),
            "down is down"
        );
        assert!(
            !Broker::is_stalled("UP", 1, None, 15_000),
            "nothing received yet"
        );
        let health = Health::new(Arc::new(Metrics::new()));
        let broker = |stalled| Broker {
            broker: "127.0.0.1:9092/1".into(),
            state: "UP".into(),
            awaiting_responses: 1,
            receive_idle_ms: Some(20_000),
            stalled,
        };
        health.set_brokers(vec![broker(true)]);
        assert!(health.kafka().stalled);
        assert_eq!(health.metrics.brokers_stalled.get(), 1);
        health.set_brokers(vec![broker(false)]);
        assert!(!health.kafka().stalled);
        assert_eq!(health.metrics.brokers_stalled.get(), 0);
    }

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
        health.set_schema_registry_reachable(false);
        assert_eq!(
            health.readiness(),
            Err("schema registry unreachable: records wait for their schema")
        );
        assert_eq!(health.metrics.schema_registry_waiting.get(), 1);
        health.set_schema_registry_reachable(true);
        assert_eq!(health.readiness(), Ok(()));
        health.set_kafka_connected(false);
        assert!(health.readiness().is_err());
        health.set_kafka_connected(true);
        health.begin_shutdown();
        assert_eq!(health.readiness(), Err("shutting down"));
    }
}
