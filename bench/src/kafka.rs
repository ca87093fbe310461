//! The Kafka side: creating the source topic, and a producer tuned for throughput whose
//! delivery reports fill a ledger of acknowledged sequence numbers. The ledger, not the count
//! of records handed to librdkafka, is what the expected deliveries are computed from.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};

use crate::workload;

/// Delivery-report tag of records that are not numbered events (probes).
const UNNUMBERED: usize = usize::MAX;

/// Creates `topic` with `partitions` unless it exists; returns its actual partition count.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<i32> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating the Kafka admin client")?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&[new_topic], &options)
        .await
        .with_context(|| format!("creating topic {topic} on {brokers}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating topic {topic}: {code}"),
        }
    }
    // The topic may take a moment to appear in metadata; it may also have existed with
    // another partition count, which the probe must know.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(5));
        if let Ok(metadata) = metadata {
            let count = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map_or(0, |t| t.partitions().len());
            if count > 0 {
                return Ok(count as i32);
            }
        }
        if Instant::now() > deadline {
            bail!("topic {topic} has no partitions in the metadata of {brokers}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Which numbered events Kafka acknowledged, filled by delivery reports.
pub struct Ledger {
    /// Bit `seq` set once event `seq` is acknowledged.
    acknowledged: Vec<AtomicU64>,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Ledger {
    fn new(events: u64) -> Self {
        Self {
            acknowledged: (0..events.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            failed: AtomicU64::new(0),
            first_error: Mutex::new(None),
        }
    }

    fn acknowledge(&self, seq: usize) {
        if let Some(word) = self.acknowledged.get(seq / 64) {
            word.fetch_or(1 << (seq % 64), Ordering::Relaxed);
        }
    }

    fn fail(&self, error: &KafkaError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert_with(|| error.to_string());
    }

    /// The acknowledged sequence numbers, ascending.
    pub fn acknowledged(&self) -> impl Iterator<Item = u64> + '_ {
        self.acknowledged
            .iter()
            .enumerate()
            .flat_map(|(index, word)| {
                let bits = word.load(Ordering::Relaxed);
                (0..64)
                    .filter(move |bit| bits & (1 << bit) != 0)
                    .map(move |bit| index as u64 * 64 + bit)
            })
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Routes delivery reports into the ledger.
struct Reports {
    ledger: Arc<Ledger>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        if seq == UNNUMBERED {
            return;
        }
        match result {
            Ok(_) => self.ledger.acknowledge(seq),
            Err((error, _)) => self.ledger.fail(error),
        }
    }
}

/// What one run produces: `events` numbered events at `rate` per second (0: as fast as
/// librdkafka takes them), stopped early by `deadline` or `stop`.
pub struct ProduceSpec {
    pub run: u32,
    pub events: u64,
    pub rate: u64,
    /// Row ids cycle over this many (`workload::row_of`).
    pub ids: u32,
    pub pad: String,
    pub deadline: Duration,
}

/// How production went; `first_us` is the epoch microseconds of the first record handed to
/// librdkafka.
pub struct Produced {
    pub sent: u64,
    pub first_us: Option<u64>,
    pub seconds: f64,
    pub stopped_early: bool,
    pub flush_error: Option<String>,
}

/// A producer for one run: numbered events and probes go through the same client.
pub struct EventProducer {
    producer: ThreadedProducer<Reports>,
    ledger: Arc<Ledger>,
    topic: String,
}

impl EventProducer {
    pub fn new(
        brokers: &str,
        topic: &str,
        events: u64,
        overrides: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let ledger = Arc::new(Ledger::new(events));
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", "cdc-gateway-bench")
            .set("linger.ms", "5")
            .set("batch.num.messages", "50000")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "2000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("message.timeout.ms", "30000")
            // One request in flight keeps records in order across retries, so any
            // out-of-order delivery the clients see is the gateway's.
            .set("max.in.flight.requests.per.connection", "1")
            .set("compression.type", "none");
        for (key, value) in overrides {
            config.set(key, value);
        }
        let producer = config
            .create_with_context(Reports {
                ledger: Arc::clone(&ledger),
            })
            .context("creating the Kafka producer")?;
        Ok(Self {
            producer,
            ledger,
            topic: topic.to_owned(),
        })
    }

    pub fn ledger(&self) -> Arc<Ledger> {
        Arc::clone(&self.ledger)
    }

    /// Sends one probe record to `partition` (not numbered, not waited for).
    pub fn probe(&self, run: u32, partition: i32) {
        let value = workload::encode_probe(run, partition);
        let record = BaseRecord::<str, str, usize>::with_opaque_to(&self.topic, UNNUMBERED)
            .partition(partition)
            .payload(&value);
        // A full queue only delays the probe; the caller sends it again.
        let _ = self.producer.send(record);
    }

    /// Produces the run's events on this thread (blocking), pacing to `spec.rate`, then
    /// flushes. `sent` counts records handed to librdkafka, for progress display.
    pub fn produce(&self, spec: &ProduceSpec, sent: &AtomicU64, stop: &AtomicBool) -> Produced {
        let started = Instant::now();
        let mut value = String::with_capacity(256 + spec.pad.len());
        let mut key = String::new();
        let mut first_us = None;
        let mut stopped_early = false;
        let mut seq = 0;
        while seq < spec.events {
            let elapsed = started.elapsed();
            if elapsed >= spec.deadline || stop.load(Ordering::Relaxed) {
                stopped_early = true;
                break;
            }
            if spec.rate > 0 {
                let due = ((elapsed.as_secs_f64() * spec.rate as f64) as u64 + 1).min(spec.events);
                if seq >= due {
                    let next = Duration::from_secs_f64(seq as f64 / spec.rate as f64);
                    std::thread::sleep(next.saturating_sub(elapsed).min(Duration::from_millis(5)));
                    continue;
                }
            }
            let now = workload::now_us();
            workload::encode_event(&mut value, spec.run, seq, spec.ids, now, &spec.pad);
            key.clear();
            let _ = write!(key, "{}", workload::row_of(seq, spec.ids));
            let record = BaseRecord::<str, str, usize>::with_opaque_to(&self.topic, seq as usize)
                .key(&key)
                .payload(&value);
            match self.producer.send(record) {
                Ok(()) => {
                    first_us.get_or_insert(now);
                    seq += 1;
                    sent.store(seq, Ordering::Relaxed);
                }
                // The queue is full: let librdkafka drain it, then stamp the record anew.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err((error, _)) => {
                    self.ledger.fail(&error);
                    seq += 1;
                    sent.store(seq, Ordering::Relaxed);
                }
            }
        }
        // Interrupted: do not wait long for a broker that may be what went wrong.
        let flush_wait = match stop.load(Ordering::Relaxed) {
            true => Duration::from_secs(5),
            false => Duration::from_secs(30),
        };
        let flush_error = self.producer.flush(flush_wait).err().map(|e| e.to_string());
        Produced {
            sent: seq,
            first_us,
            seconds: started.elapsed().as_secs_f64(),
            stopped_early,
            flush_error,
        }
    }
}
