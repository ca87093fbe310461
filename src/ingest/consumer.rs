//! Kafka -> fan-out. The consumer assigns itself every partition of the source topics (see
//! [`assignment`]: each replica reads everything, so it joins no group and a restart is back
//! in seconds), warms the history from what came before, then reads. Each record is decoded
//! and dispatched before the next is taken, so a full client queue paces consumption instead
//! of buffering without bound. A record at or below the highest offset already dispatched
//! from its partition (Kafka hands records out again after a restarted fetch) is skipped and
//! counted: no client ever gets one source record twice. An offset is stored only once its
//! record is fully dispatched (librdkafka's auto-commit then commits stored offsets under the
//! group id), so a crash re-delivers rather than loses. Bad input is counted, logged at a
//! bounded rate, optionally dead-lettered, and skipped. An Avro record whose schema id is new
//! waits for its schema from the registry before it is decoded: while the registry cannot be
//! reached the consumer retries with backoff and reads no other record (subscriptions are
//! still served; readiness says why), so no record is skipped or dead-lettered for the
//! registry's sake.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::assignment::{self, Sources, Start};
use super::context::GatewayContext;
use super::dead_letter::DeadLetter;
use super::decode::{DecodeError, Decoded, Decoder, RawRecord};
use super::registry::{Lookup, Registry};
use super::warmup::{Span, Warmup};

use crate::config::{Config, OffsetReset};
use crate::event::SourcePosition;
use crate::fanout::{FanOut, Join};
use crate::health::{self, Health};
use crate::metrics::Metrics;
use crate::position::Partition;

/// Why the ingest side could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot create the Kafka consumer (check --brokers and --kafka-property): {0}")]
    Consumer(#[source] KafkaError),
    #[error("--source-topics: {0}")]
    Pattern(#[source] regex::Error),
    #[error("cannot create the dead-letter producer (check --kafka-property): {0}")]
    DeadLetter(#[source] KafkaError),
    #[error(transparent)]
    Registry(#[from] crate::config::ConfigError),
}

/// The first wait before asking an unreachable schema registry again, and the longest.
const REGISTRY_RETRY: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

pub type GatewayConsumer = StreamConsumer<GatewayContext>;

/// What a partition's first record should be ([`Ingest::check_start`]).
#[derive(Clone, Copy)]
struct FirstRecord {
    next: i64,
    rewind: Option<i64>,
    sent_back: bool,
}

/// The outcome of checking a record against its partition's start.
enum FirstCheck {
    /// Not a partition's first record, or it came where it should.
    OnTime,
    /// It came late and the consumer was sent back: the record is dropped.
    SentBack,
    /// It came late and could not be read again: the records from `from` are lost.
    Late { from: i64 },
}

/// A record read and decoded, before it is dispatched.
struct Read {
    position: SourcePosition,
    /// Where records this replica will never read begin, if they end at this one.
    lost_from: Option<i64>,
    decoded: Result<Decoded, DecodeError>,
    /// The key and value of a record that failed, for the dead-letter topic.
    failed: Option<RecordBytes>,
}

/// A record's key and value, copied out of librdkafka's buffer.
type RecordBytes = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The consumer side, built: ready to run.
pub struct Ingest {
    consumer: Arc<GatewayConsumer>,
    /// The group-less reader that finds where a partition's log ends
    /// ([`assignment::starts`]).
    probe: ClientConfig,
    sources: Sources,
    reset: OffsetReset,
    discovery_interval: Duration,
    decoder: Decoder,
    /// Where the schemas of Avro records come from (`--schema-registry-url`).
    registry: Option<Registry>,
    dead_letter: Option<DeadLetter>,
    fanout: FanOut,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    warmup: Warmup,
    /// Highest offset dispatched per partition: anything at or below it is a repeat.
    highest: HashMap<Partition, i64>,
    /// Partitions whose first record has not come yet: the offset it should have, where
    /// the consumer may be sent back to if it starts later (the warm-up read from there),
    /// and whether it was already.
    first: HashMap<Partition, FirstRecord>,
    /// `events_consumed_total` by result, looked up once instead of per record.
    consumed: HashMap<&'static str, prometheus::IntCounter>,
}

impl Ingest {
    pub fn new(
        config: &Config,
        fanout: FanOut,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, IngestError> {
        let mut client = kafka_client(
            config,
            |client| {
                client
                    .set("group.id", config.consumer_group())
                    .set("client.id", "cdc-gateway")
                    .set("enable.auto.commit", "true")
                    .set("auto.commit.interval.ms", "1000")
                    .set("enable.auto.offset.store", "false")
                    // The gateway picks every start offset itself (assignment.rs, from
                    // --auto-offset-reset); librdkafka resets only after an offset went out
                    // of range (deleted by retention), and then the oldest records still
                    // held are the next to deliver, never the end of the log.
                    .set("auto.offset.reset", "earliest")
                    .set(
                        "statistics.interval.ms",
                        config.stats_interval.as_millis().to_string(),
                    )
                    .set("fetch.wait.max.ms", "10");
            },
            |_| true,
        );
        // librdkafka's warnings reach the context whatever the log filter: one of them is how
        // a position reset after deleted records is seen.
        if (client.log_level as i32) < RDKafkaLogLevel::Warning as i32 {
            client.set_log_level(RDKafkaLogLevel::Warning);
        }
        let consumer: GatewayConsumer = client
            .create_with_context(
                GatewayContext::new(Arc::clone(&health))
                    .with_stall_timeout(config.kafka_stall_timeout),
            )
            .map_err(IngestError::Consumer)?;
        let probe = kafka_client(
            config,
            |probe| {
                probe
                    .set("group.id", format!("{}-probe", config.consumer_group()))
                    .set("client.id", "cdc-gateway-probe")
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("enable.partition.eof", "true");
            },
            |_| true,
        );
        let sources = Sources::new(&config.source_topics).map_err(IngestError::Pattern)?;
        // Every reason shows as 0 before the first failure.
        for reason in DecodeError::REASONS {
            metrics.decode_errors.with_label_values(&[reason]);
        }
        let dead_letter = match &config.dead_letter_topic {
            Some(topic) => Some(
                DeadLetter::new(config, topic, Arc::clone(&metrics))
                    .map_err(IngestError::DeadLetter)?,
            ),
            None => None,
        };
        let consumed: HashMap<&'static str, prometheus::IntCounter> =
            crate::metrics::CONSUMED_RESULTS
                .iter()
                .map(|result| {
                    (
                        *result,
                        metrics.events_consumed.with_label_values(&[*result]),
                    )
                })
                .collect();
        let registry = Registry::from_config(config)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            probe,
            sources,
            reset: config.auto_offset_reset,
            discovery_interval: config.partition_discovery_interval,
            decoder: Decoder::new(config.input_format, config.entity_renames())
                .with_decimal_format(config.decimal_format)
                .with_unknown_types(metrics.decode_unknown_types.clone())
                .with_entity_naming(config.entity_naming)
                .with_collisions(metrics.entity_collisions.clone()),
            registry,
            dead_letter,
            fanout,
            health,
            metrics,
            warmup: Warmup::new(config),
            highest: HashMap::new(),
            first: HashMap::new(),
            consumed,
        })
    }

    /// Assigns the partitions, then consumes until `stop` fires, then commits what was
    /// dispatched. Between two records it serves subscriptions (`joins`) and takes on the
    /// partitions that discovery finds.
    pub async fn run(mut self, stop: CancellationToken, mut joins: mpsc::Receiver<Join>) {
        let Some(known) = self.start(&stop).await else {
            return;
        };
        self.fanout.dispatched().mark_listed();
        let (found, mut discovered) = mpsc::channel(4);
        let discovery = tokio::spawn(discover(
            Arc::clone(&self.consumer),
            self.probe.clone(),
            self.sources.clone(),
            known,
            self.discovery_interval,
            found,
        ));
        let mut log_limit = LogLimit::new(Duration::from_secs(1));
        // A record borrows the consumer while the loop reads it with `&mut self`.
        let consumer = Arc::clone(&self.consumer);
        loop {
            if self.fanout.tables().should_flush() && !self.flush_tables(&stop).await {
                break;
            }
            let flush_due = self.fanout.tables().flush_due();
            let message = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = sleep_until(flush_due), if flush_due.is_some() => {
                    if !self.flush_tables(&stop).await {
                        break;
                    }
                    continue;
                }
                Some(join) = joins.recv() => {
                    self.fanout.join(join).await;
                    continue;
                }
                Some(starts) = discovered.recv() => {
                    self.add(&starts, &HashMap::new());
                    self.report_deleted(&starts).await;
                    continue;
                }
                message = consumer.recv() => message,
            };
            let received = Instant::now();
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    if log_limit.allow() {
                        tracing::warn!("Kafka consumer error: {e}");
                    }
                    continue;
                }
            };
            let missing = self
                .decoder
                .missing_schemas(message.key(), message.payload());
            let read = if missing.is_empty() {
                let read = self.read(&message);
                drop(message);
                read
            } else {
                // The record waits for its schemas, away from librdkafka's buffer.
                let message = message.detach();
                if !self.fetch_schemas(&missing, &stop, Some(&mut joins)).await {
                    break;
                }
                self.read(&message)
            };
            if let Some(read) = read {
                self.handle(read, received, &mut log_limit).await;
            }
        }
        discovery.abort();
        if let Err(e) = self.fanout.tables().flush() {
            tracing::warn!(
                "final table store commit failed (the next start reads those records again): {e}"
            );
        }
        self.commit();
    }

    /// Checks a record against its partition's place and decodes it; `None` when it is not
    /// to be dispatched (a repeat, or the consumer was sent back).
    fn read(&mut self, message: &impl Message) -> Option<Read> {
        let position = SourcePosition::new(message.topic(), message.partition(), message.offset());
        // Where records this replica will never read begin, if they end at this one.
        let mut lost_from = None;
        match Self::check_start(&mut self.first, &mut self.highest, &self.consumer, position) {
            FirstCheck::SentBack => return None,
            FirstCheck::Late { from } => lost_from = Some(from),
            FirstCheck::OnTime => {}
        }
        let highest = self.highest.entry(position.key()).or_insert(i64::MIN);
        if position.offset <= *highest {
            self.count("duplicate");
            return None;
        }
        let previous = std::mem::replace(highest, position.offset);
        // A reset librdkafka made after an out-of-range fetch is answered by the first
        // record of its partition that follows, gap or not: a flag left standing would
        // turn a later harmless skip into a reported loss.
        let reset = self.consumer.context().take_reset(&position.key());
        if previous == i64::MIN || position.offset > previous + 1 {
            // Offsets may skip (compaction, transaction markers); logged to tell those
            // from records a broker failed to hand over. A skip after librdkafka reset
            // the position past deleted records is a loss.
            tracing::debug!(
                partition = %position.key(),
                after = previous,
                offset = position.offset,
                "first record, or offsets skipped"
            );
            if previous != i64::MIN && reset {
                lost_from = Some(previous + 1);
            }
        }
        let record = RawRecord {
            key: message.key(),
            value: message.payload(),
            position,
            timestamp_ms: message.timestamp().to_millis(),
        };
        let decoded = self.decoder.decode(&record);
        let failed = decoded.is_err().then(|| {
            (
                record.key.map(<[u8]>::to_vec),
                record.value.map(<[u8]>::to_vec),
            )
        });
        Some(Read {
            position,
            lost_from,
            decoded,
            failed,
        })
    }

    /// Dispatches a decoded record (or rejects it) and stores its offset.
    async fn handle(&mut self, read: Read, received: Instant, log_limit: &mut LogLimit) {
        let Read {
            position,
            lost_from,
            decoded,
            failed,
        } = read;
        if let Some(from) = lost_from {
            self.lost(position, from).await;
        }
        match decoded {
            Ok(Decoded::Event(event)) => {
                self.fanout.dispatch(*event).await;
                self.metrics
                    .dispatch_latency
                    .observe(received.elapsed().as_secs_f64());
                self.count("dispatched");
            }
            Ok(Decoded::Tombstone) => {
                self.fanout.dispatched().record(position);
                self.count("tombstone");
            }
            Err(error) => {
                let (key, value) = failed.unwrap_or_default();
                self.fanout.dispatched().record(position);
                self.reject(position, &error, key, value, log_limit);
            }
        }
        let topic = position.topic.as_str();
        if let Err(e) = self
            .consumer
            .store_offset(topic, position.partition, position.offset)
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

    /// Fetches the registry schemas a record needs, retrying with backoff while the registry
    /// gives no answer; `false` when stopped first (the record is then read again after a
    /// restart: nothing was stored for it). Subscriptions (`joins`) are served meanwhile, as
    /// between two records: the waiting record is not dispatched yet.
    async fn fetch_schemas(
        &self,
        ids: &[u32],
        stop: &CancellationToken,
        mut joins: Option<&mut mpsc::Receiver<Join>>,
    ) -> bool {
        let Some(registry) = &self.registry else {
            // No registry to ask: decoding says so, per record.
            return true;
        };
        let fetches = &self.metrics.schema_registry_fetches;
        for &id in ids {
            let mut retry = REGISTRY_RETRY.0;
            loop {
                match registry.schema(id).await {
                    Ok(lookup) => {
                        let result = match &lookup {
                            Lookup::Schema(_) => "ok",
                            Lookup::NotFound => "not_found",
                        };
                        fetches.with_label_values(&[result]).inc();
                        let text = match &lookup {
                            Lookup::Schema(text) => Some(text.as_str()),
                            Lookup::NotFound => None,
                        };
                        self.decoder.add_schema(id, text);
                        self.metrics
                            .schema_registry_schemas
                            .set(self.decoder.schemas_held() as i64);
                        self.health.set_schema_registry_reachable(true);
                        break;
                    }
                    Err(e) => {
                        fetches.with_label_values(&["error"]).inc();
                        self.health.set_schema_registry_reachable(false);
                        tracing::warn!(
                            registry = registry.url(),
                            schema_id = id,
                            retry_in = ?retry,
                            "cannot fetch a schema from the schema registry; consumption waits for it: {e}"
                        );
                        let wait = tokio::time::sleep(retry);
                        tokio::pin!(wait);
                        loop {
                            tokio::select! {
                                _ = stop.cancelled() => return false,
                                _ = &mut wait => break,
                                Some(join) = async {
                                    match joins.as_mut() {
                                        Some(joins) => joins.recv().await,
                                        None => std::future::pending().await,
                                    }
                                } => self.fanout.join(join).await,
                            }
                        }
                        retry = (retry * 2).min(REGISTRY_RETRY.1);
                    }
                }
            }
        }
        true
    }

    /// Finds the partitions and their starts (retrying until the brokers answer), warms the
    /// history and the tables from what came before, and assigns the partitions.
    /// `None` when stopped first.
    async fn start(&mut self, stop: &CancellationToken) -> Option<BTreeSet<Partition>> {
        let mut retry = Duration::from_millis(200);
        let (known, starts) = loop {
            let (consumer, probe, sources, reset) = (
                Arc::clone(&self.consumer),
                self.probe.clone(),
                self.sources.clone(),
                self.reset,
            );
            let found = tokio::task::spawn_blocking(move || {
                let known = assignment::partitions(&consumer, &sources)?;
                let starts = assignment::starts(&consumer, &probe, &known, reset)?;
                Ok::<_, KafkaError>((known, starts))
            });
            tokio::select! {
                _ = stop.cancelled() => return None,
                found = found => match found {
                    Ok(Ok(found)) => {
                        // The brokers just answered: connected now, not at the first
                        // statistics report (which then keeps it current).
                        self.health.set_kafka_connected(true);
                        break found;
                    }
                    Ok(Err(e)) => tracing::warn!("cannot read the source partitions yet: {e}"),
                    Err(e) => tracing::warn!("cannot read the source partitions yet: {e}"),
                },
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(Duration::from_secs(5));
        };
        let warmed_from = self.warm(&starts, stop).await?;
        self.add(&starts, &warmed_from);
        self.report_deleted(&starts).await;
        Some(known)
    }

    /// A partition whose committed offset the broker no longer holds (an outage longer than
    /// retention) starts at its low watermark: the records in between are lost like any
    /// skipped unread, and said so ([`Ingest::lost`]), not clamped away in silence.
    async fn report_deleted(&self, starts: &[Start]) {
        for start in starts {
            if let Some(from) = start.deleted_from {
                let at = SourcePosition {
                    topic: start.partition.topic,
                    partition: start.partition.partition,
                    offset: start.low,
                };
                self.lost(at, from).await;
            }
        }
    }

    /// Reads what came before each partition's start: into the tables from where the table
    /// store stands (a new store: everything; one that is up to date: nothing), and the last
    /// `--history-warmup` records into the history. Says from where each holds every record,
    /// and returns, per partition, where history holds it from.
    async fn warm(
        &self,
        starts: &[Start],
        stop: &CancellationToken,
    ) -> Option<HashMap<Partition, i64>> {
        let tables = self.fanout.tables();
        let history = self.fanout.history();
        let mut spans = Vec::new();
        let mut history_from = HashMap::new();
        let mut store_from = HashMap::new();
        for start in starts {
            let applied = tables.begin(start.partition, start.low);
            let mut from = applied.next;
            if from < start.low {
                // Records the store never applied were deleted since (retention).
                tracing::warn!(partition = %start.partition, from, low = start.low, "records the table store had not applied were deleted: its rows may be missing");
                tables.lose(start.partition, start.low);
                from = start.low;
            }
            let held = start.next.saturating_sub(self.warmup.window).max(start.low);
            history_from.insert(start.partition, held);
            store_from.insert(start.partition, from);
            spans.push(Span {
                partition: start.partition,
                first: from.min(held),
                end: start.next,
                low: start.low,
            });
        }
        let mut remaining: i64 = spans.iter().map(|s| (s.end - s.first).max(0)).sum();
        let gauge = &self.metrics.tables.rebuild_remaining;
        gauge.set(remaining);
        if remaining > 0 {
            self.health.set_tables_building(true);
            tracing::info!(
                partitions = starts.len(),
                records = remaining,
                "reading what came before the partitions' starts: into the tables (from where the table store stands) and the resume history"
            );
        }
        let (chunks, mut received) = mpsc::channel(4);
        let (warmup, owned) = (self.warmup.clone(), spans.clone());
        let reader = tokio::task::spawn_blocking(move || warmup.read(&owned, &chunks));
        let (started, mut logged) = (Instant::now(), Instant::now());
        let mut events = 0u64;
        let mut earlier = crate::fanout::Earlier::new();
        loop {
            let chunk = tokio::select! {
                _ = stop.cancelled() => return None,
                chunk = received.recv() => match chunk {
                    Some(chunk) => chunk,
                    None => break,
                },
            };
            let n = chunk.len() as i64;
            for record in chunk {
                let raw = RawRecord {
                    key: record.key.as_deref(),
                    value: record.value.as_deref(),
                    position: SourcePosition {
                        topic: record.partition.topic,
                        partition: record.partition.partition,
                        offset: record.offset,
                    },
                    timestamp_ms: record.timestamp_ms,
                };
                let missing = self.decoder.missing_schemas(raw.key, raw.value);
                if !missing.is_empty() && !self.fetch_schemas(&missing, stop, None).await {
                    return None;
                }
                if let Ok(Decoded::Event(event)) = self.decoder.decode(&raw) {
                    let into_history = record.offset >= history_from[&record.partition];
                    self.fanout.remember(*event, into_history, &mut earlier);
                    events += 1;
                }
            }
            remaining -= n;
            gauge.set(remaining.max(0));
            self.metrics.tables.rebuild_records.inc_by(n as u64);
            if tables.should_flush() && !self.flush_tables(stop).await {
                return None;
            }
            if logged.elapsed() >= Duration::from_secs(5) {
                logged = Instant::now();
                tracing::info!(
                    remaining,
                    rate = (events as f64 / started.elapsed().as_secs_f64()) as u64,
                    "start-up read in progress"
                );
            }
        }
        let reached = match reader.await {
            Ok(Ok(reached)) => reached,
            Ok(Err(e)) => {
                tracing::warn!("start-up read failed: {e}");
                HashMap::new()
            }
            Err(e) => {
                tracing::warn!("start-up read failed: {e}");
                HashMap::new()
            }
        };
        let mut warmed_from = HashMap::new();
        for span in &spans {
            let partition = span.partition;
            let from = match reached.get(&partition) {
                Some(first_read) => {
                    if *first_read > store_from[&partition] && span.first < span.end {
                        // The broker started later than asked: what it skipped was not applied.
                        tables.lose(partition, span.end);
                    } else {
                        tables.reached(partition, span.end);
                    }
                    (*first_read).max(history_from[&partition])
                }
                None => {
                    tables.lose(partition, span.end);
                    span.end
                }
            };
            history.cover(partition, from);
            warmed_from.insert(partition, from);
        }
        if !self.flush_tables(stop).await {
            return None;
        }
        gauge.set(0);
        self.health.set_tables_building(false);
        if events > 0 {
            tracing::info!(
                partitions = starts.len(),
                events,
                rows = tables.rows_held(),
                seconds = started.elapsed().as_secs_f64(),
                "tables and history read up to the partitions' starts"
            );
        }
        Some(warmed_from)
    }

    /// Commits the rows applied so far to the table store, waiting while it cannot be
    /// written (full, or a disk error): no further record is read meanwhile, so none is
    /// delivered to clients and missing from the tables. `false` when stopped first.
    async fn flush_tables(&self, stop: &CancellationToken) -> bool {
        let tables = self.fanout.tables();
        let mut retry = Duration::from_millis(500);
        loop {
            match tables.flush() {
                Ok(()) => {
                    self.health.set_tables_failing(false);
                    return true;
                }
                Err(_) => self.health.set_tables_failing(true),
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(Duration::from_secs(5));
        }
    }

    /// Starts reading `starts` (at start, or partitions discovery found); `warmed_from` is where
    /// the warm-up read each from, where a partition that starts late goes back to.
    fn add(&mut self, starts: &[Start], warmed_from: &HashMap<Partition, i64>) {
        if starts.is_empty() {
            return;
        }
        for start in starts {
            // A partition new to the tables (found after the start) is applied from its
            // start: complete when that is its beginning.
            let applied = self.fanout.tables().begin(start.partition, start.low);
            if applied.next < start.next {
                self.fanout.tables().lose(start.partition, start.next);
            }
            self.fanout.dispatched().start(start.partition, start.next);
            self.fanout.history().cover(start.partition, start.next);
            let rewind = warmed_from.get(&start.partition).copied();
            self.first.insert(
                start.partition,
                FirstRecord {
                    next: start.next,
                    rewind: rewind.filter(|from| *from < start.next),
                    sent_back: false,
                },
            );
        }
        let assigned =
            assignment::assignment(starts).and_then(|list| self.consumer.incremental_assign(&list));
        if let Err(e) = assigned {
            tracing::error!("cannot assign the source partitions: {e}");
            return;
        }
        let partitions: Vec<health::Partition> = self
            .fanout
            .dispatched()
            .snapshot()
            .keys()
            .map(|p| health::Partition {
                topic: p.topic.as_str().to_owned(),
                partition: p.partition,
            })
            .collect();
        tracing::info!(
            added = starts.len(),
            total = partitions.len(),
            "source partitions assigned"
        );
        self.health.set_assignment(partitions);
    }

    /// Whether a partition's first record came after the offset the partition was assigned
    /// at; if so the consumer is sent back once to read what it skipped (the record is then
    /// dropped). tansu 0.6 does this when a replica restarts at an offset inside one of its
    /// record batches (after its predecessor's last commit): it hands over the next batch.
    /// The consumer goes back to where the warm-up started reading, which the broker did
    /// serve, and everything before the assigned offset is dropped again as a repeat. Without
    /// that, the records in between would be in no delivery, history or snapshot of this
    /// replica while its position says they were dispatched. When the consumer still starts
    /// late (the offsets are gone: compaction, retention; or there is no warm-up to go back
    /// to), the records in between are lost ([`Ingest::lost`]).
    fn check_start(
        first: &mut HashMap<Partition, FirstRecord>,
        highest: &mut HashMap<Partition, i64>,
        consumer: &GatewayConsumer,
        at: SourcePosition,
    ) -> FirstCheck {
        if first.is_empty() {
            return FirstCheck::OnTime;
        }
        let Some(expected) = first.remove(&at.key()) else {
            return FirstCheck::OnTime;
        };
        let next = expected.next;
        if at.offset <= next {
            return FirstCheck::OnTime;
        }
        if let (Some(rewind), false) = (expected.rewind, expected.sent_back) {
            let sought = consumer.seek(
                at.topic.as_str(),
                at.partition,
                rdkafka::Offset::Offset(rewind),
                Duration::from_secs(5),
            );
            match sought {
                Ok(()) => {
                    tracing::warn!(partition = %at.key(), expected = next, got = at.offset, rewind, "a partition's first record came after its start: reading it again from the warm-up's start");
                    highest.insert(at.key(), next - 1);
                    first.insert(
                        at.key(),
                        FirstRecord {
                            sent_back: true,
                            ..expected
                        },
                    );
                    return FirstCheck::SentBack;
                }
                Err(e) => {
                    tracing::warn!(partition = %at.key(), "cannot seek back to {rewind}: {e}")
                }
            }
        }
        consumer.context().take_reset(&at.key());
        FirstCheck::Late { from: next }
    }

    /// The records of `at`'s partition from offset `from` up to `at` were never read and
    /// cannot be: no client gets them, every subscription is told (`reset`), history stops
    /// answering resumes from before them, and snapshots say they may lack rows.
    async fn lost(&self, at: SourcePosition, from: i64) {
        tracing::warn!(
            partition = %at.key(),
            from,
            to = at.offset - 1,
            "source records skipped unread (the broker no longer has them, or did not hand them over): no client receives them, and resumes from before them answer recovered: false"
        );
        self.metrics
            .source_offsets_lost
            .inc_by(u64::try_from(at.offset - from).unwrap_or(0));
        self.fanout.history().lose(at.key(), at.offset);
        self.fanout.tables().lose(at.key(), at.offset);
        self.fanout.reset_all(at.key(), from, at.offset - 1).await;
    }

    /// One record's result, one of [`crate::metrics::CONSUMED_RESULTS`].
    fn count(&self, result: &'static str) {
        self.consumed[result].inc();
    }

    fn reject(
        &self,
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
        let topic = position.topic.as_str();
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
            dead_letter.send(topic, position, error, key, value);
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

/// Sleeps until `at` (`None`: never; the caller's branch is disabled then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Re-reads the cluster's metadata every `every` and sends the partitions not seen before,
/// each starting at its committed offset or else at its beginning (it is new).
async fn discover(
    consumer: Arc<GatewayConsumer>,
    probe: ClientConfig,
    sources: Sources,
    mut known: BTreeSet<Partition>,
    every: Duration,
    found: mpsc::Sender<Vec<Start>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (c, p, s, k) = (
            Arc::clone(&consumer),
            probe.clone(),
            sources.clone(),
            known.clone(),
        );
        let looked = tokio::task::spawn_blocking(move || {
            let now = assignment::partitions(&c, &s)?;
            let new: BTreeSet<Partition> = now.difference(&k).copied().collect();
            let starts = assignment::starts(&c, &p, &new, OffsetReset::Earliest)?;
            Ok::<_, KafkaError>((new, starts))
        })
        .await;
        match looked {
            Ok(Ok((new, starts))) if !new.is_empty() => {
                tracing::info!(partitions = ?new, "new source partitions found");
                if found.send(starts).await.is_err() {
                    return;
                }
                known.extend(new);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!("partition discovery failed, retrying: {e}"),
            Err(e) => tracing::debug!("partition discovery failed, retrying: {e}"),
        }
    }
}

/// A librdkafka client of the gateway: `--brokers`, then the settings of its role, then the
/// `--kafka-property` values that `keep` accepts, which win (security and tuning apply to
/// every client the gateway makes).
pub(super) fn kafka_client(
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
