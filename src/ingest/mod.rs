//! Kafka -> fan-out. One consumer-group member reads the source topics; each record is decoded
//! and dispatched before the next is taken, so a full client queue paces consumption instead
//! of buffering without bound. An offset is stored only once its record is fully dispatched
//! (librdkafka's auto-commit then commits stored offsets), so a crash re-delivers rather than
//! loses. Bad input is counted, logged at a bounded rate, optionally dead-lettered, and skipped.

mod context;
mod dead_letter;
pub mod decode;
mod warmup;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use context::GatewayContext;
use dead_letter::DeadLetter;
use decode::{DecodeError, Decoded, Decoder, RawRecord};
use warmup::Warmup;

use crate::config::Config;
use crate::event::SourcePosition;
use crate::fanout::{FanOut, Join};
use crate::health::Health;
use crate::metrics::Metrics;

/// Why the ingest side could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot create the Kafka consumer (check --brokers and --kafka-property): {0}")]
    Consumer(#[source] KafkaError),
    #[error("cannot subscribe to --source-topics {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        source: KafkaError,
    },
    #[error("cannot create the dead-letter producer (check --kafka-property): {0}")]
    DeadLetter(#[source] KafkaError),
}

pub type GatewayConsumer = StreamConsumer<GatewayContext>;

/// The consumer side, built and subscribed: ready to run.
pub struct Ingest {
    consumer: Arc<GatewayConsumer>,
    decoder: Decoder,
    dead_letter: Option<DeadLetter>,
    fanout: FanOut,
    metrics: Arc<Metrics>,
    warmup: Option<Warmup>,
}

impl Ingest {
    pub fn new(
        config: &Config,
        fanout: FanOut,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, IngestError> {
        let client = kafka_client(
            config,
            |client| {
                client
                    .set("group.id", &config.group_id)
                    .set("client.id", "cdc-gateway")
                    .set("enable.auto.commit", "true")
                    .set("auto.commit.interval.ms", "1000")
                    .set("enable.auto.offset.store", "false")
                    .set("auto.offset.reset", config.auto_offset_reset.as_kafka())
                    .set(
                        "statistics.interval.ms",
                        config.stats_interval.as_millis().to_string(),
                    )
                    .set("fetch.wait.max.ms", "10")
                    .set("session.timeout.ms", "10000")
                    .set("heartbeat.interval.ms", "1000")
                    .set("topic.metadata.refresh.interval.ms", "10000");
            },
            |_| true,
        );
        let consumer: GatewayConsumer = client
            .create_with_context(GatewayContext::new(health))
            .map_err(IngestError::Consumer)?;
        let topics: Vec<&str> = config.source_topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| IngestError::Subscribe {
                topics: config.source_topics.clone(),
                source,
            })?;
        let dead_letter = match &config.dead_letter_topic {
            Some(topic) => Some(
                DeadLetter::new(config, topic, Arc::clone(&metrics))
                    .map_err(IngestError::DeadLetter)?,
            ),
            None => None,
        };
        Ok(Self {
            consumer: Arc::new(consumer),
            decoder: Decoder::new(config.input_format, config.entity_renames()),
            dead_letter,
            fanout,
            metrics,
            warmup: Warmup::new(config),
        })
    }

    /// Consumes until `stop` fires, then commits what was dispatched. Between two records it
    /// serves the subscriptions that start with a snapshot (`joins`).
    pub async fn run(mut self, stop: CancellationToken, mut joins: mpsc::Receiver<Join>) {
        let mut log_limit = LogLimit::new(Duration::from_secs(1));
        loop {
            let message = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(join) = joins.recv() => {
                    if let (Some(warmup), Some(since)) = (self.warmup.as_mut(), &join.since) {
                        warmup
                            .before_resume(since.keys().copied(), &self.consumer, &self.decoder, &self.fanout)
                            .await;
                    }
                    self.fanout.join(join).await;
                    continue;
                }
                message = self.consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    if log_limit.allow() {
                        tracing::warn!("Kafka consumer error: {e}");
                    }
                    continue;
                }
            };
            let topic = message.topic().to_owned();
            let position = SourcePosition {
                partition: message.partition(),
                offset: message.offset(),
            };
            if let Some(warmup) = self.warmup.as_mut() {
                warmup
                    .before_first(
                        &topic,
                        position.partition,
                        position.offset,
                        &self.decoder,
                        &self.fanout,
                    )
                    .await;
            }
            let record = RawRecord {
                key: message.key(),
                value: message.payload(),
                position,
                timestamp_ms: message.timestamp().to_millis(),
            };
            let decoded = self.decoder.decode(&record);
            let failed = match &decoded {
                Err(error) => Some((
                    error.clone(),
                    record.key.map(<[u8]>::to_vec),
                    record.value.map(<[u8]>::to_vec),
                )),
                Ok(_) => None,
            };
            drop(message);
            match decoded {
                Ok(Decoded::Event(event)) => {
                    self.fanout.dispatch(&event).await;
                    self.count("dispatched");
                }
                Ok(Decoded::Tombstone) => self.count("tombstone"),
                Err(_) => {
                    let (error, key, value) = failed.expect("set for every decode error");
                    self.reject(&topic, position, &error, key, value, &mut log_limit)
                        .await;
                }
            }
            if let Err(e) = self
                .consumer
                .store_offset(&topic, position.partition, position.offset)
            {
                if log_limit.allow() {
                    tracing::warn!(
                        topic,
                        partition = position.partition,
                        "cannot store offset: {e}"
                    );
                }
            }
        }
        self.commit();
    }

    fn count(&self, result: &str) {
        self.metrics
            .events_consumed
            .with_label_values(&[result])
            .inc();
    }

    async fn reject(
        &self,
        topic: &str,
        position: SourcePosition,
        error: &DecodeError,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        log_limit: &mut LogLimit,
    ) {
        self.count("decode_error");
        self.metrics
            .decode_errors
            .with_label_values(&[error.reason()])
            .inc();
        if log_limit.allow() {
            let size = value.as_ref().map_or(0, Vec::len);
            tracing::warn!(
                topic,
                partition = position.partition,
                offset = position.offset,
                value_bytes = size,
                reason = error.reason(),
                "skipping undecodable record: {error}"
            );
        }
        if let Some(dead_letter) = &self.dead_letter {
            dead_letter.send(topic, position, error, key, value).await;
        }
    }

    /// Commits the offsets of everything dispatched so far.
    fn commit(&self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("committed consumer offsets"),
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!("final offset commit failed: {e}"),
        }
    }
}

/// A librdkafka client of the gateway: `--brokers`, then the settings of its role, then the
/// `--kafka-property` values that `keep` accepts, which win (security and tuning apply to
/// every client the gateway makes).
fn kafka_client(
    config: &Config,
    settings: impl FnOnce(&mut ClientConfig),
    keep: impl Fn(&str) -> bool,
) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    settings(&mut client);
    for (key, value) in &config.kafka_properties {
        if keep(key) {
            client.set(key, value);
        }
    }
    client
}

/// Bounds how often the same kind of problem is logged: bad input can arrive at line rate.
struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            self.suppressed += 1;
            return false;
        }
        if self.suppressed > 0 {
            tracing::warn!("{} similar messages suppressed", self.suppressed);
            self.suppressed = 0;
        }
        self.last = Some(now);
        true
    }
}
