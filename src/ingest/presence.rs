//! The Kafka side of presence ([`crate::presence`]): this replica's document goes to the
//! compacted `--presence-topic`, keyed by its replica id, whenever its watchers changed (at
//! most once per `--presence-interval`) and at least every few intervals as a heartbeat;
//! a tombstone when it stops. A group-less reader follows every partition of the topic from
//! its beginning (compaction keeps one document per replica) and hands the other replicas'
//! documents over. The broker being away only makes presence local for a while: nothing
//! here holds the data path.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::presence::{Document, Presence};

/// Heartbeat: a document is sent at least every this many intervals.
const HEARTBEAT_INTERVALS: u32 = 2;

/// Publishes and reads presence documents until `stop`, then sends the tombstone.
pub async fn link(
    presence: Arc<Presence>,
    config: &Config,
    topic: String,
    stop: CancellationToken,
) {
    let producer: FutureProducer = match super::kafka_client(
        config,
        |client| {
            client
                .set("client.id", "cdc-gateway-presence")
                .set("message.timeout.ms", "5000");
        },
        |key| !super::dead_letter::is_consumer_only(key),
    )
    .create()
    {
        Ok(producer) => producer,
        Err(e) => return tracing::warn!("presence is this replica's only: no producer: {e}"),
    };
    ensure_topic(config, &topic).await;
    let reader = tokio::spawn(read(
        Arc::clone(&presence),
        config.clone(),
        topic.clone(),
        stop.clone(),
    ));
    let interval = presence.interval();
    let mut sent_version = None;
    let mut since_sent = 0;
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        let version = presence.version();
        since_sent += 1;
        if sent_version == Some(version) && since_sent < HEARTBEAT_INTERVALS {
            continue;
        }
        let document = presence.document();
        let value = serde_json::to_vec(&document).expect("a document serializes");
        let record = FutureRecord::to(&topic)
            .key(presence.replica())
            .payload(&value);
        match producer.send(record, Duration::from_secs(5)).await {
            Ok(_) => {
                sent_version = Some(version);
                since_sent = 0;
            }
            Err((e, _)) => tracing::debug!("presence document not sent: {e}"),
        }
    }
    // Gone cleanly: the others drop this replica at once instead of aging it out.
    let tombstone = FutureRecord::<str, [u8]>::to(&topic).key(presence.replica());
    let _ = producer.send(tombstone, Duration::from_secs(2)).await;
    reader.abort();
}

/// Creates the presence topic, compacted, unless it exists. Without the right to create it
/// (or on a broker that refuses), it must be created beforehand (docs/operating.md).
async fn ensure_topic(config: &Config, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = match super::kafka_client(
        config,
        |client| {
            client.set("client.id", "cdc-gateway-presence");
        },
        |key| !super::dead_letter::is_consumer_only(key),
    )
    .create()
    {
        Ok(admin) => admin,
        Err(e) => return tracing::warn!(topic, "cannot create the presence topic: {e}"),
    };
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    // The broker's default replication first; a broker without one (replication -1) is
    // asked for a single replica.
    for replication in [TopicReplication::Fixed(-1), TopicReplication::Fixed(1)] {
        let new = NewTopic::new(topic, 1, replication).set("cleanup.policy", "compact");
        match admin.create_topics([&new], &options).await {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) => return tracing::info!(topic, "presence topic created"),
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => return,
                Some(Err((_, code))) => {
                    tracing::debug!(topic, "presence topic not created ({code}); retrying")
                }
                None => return,
            },
            Err(e) => return tracing::warn!(topic, "cannot create the presence topic: {e}"),
        }
    }
    tracing::warn!(topic, "the presence topic could not be created: create it (cleanup.policy=compact) or give --presence-topic");
}

/// Follows the presence topic from its beginning, applying the other replicas' documents.
async fn read(presence: Arc<Presence>, config: Config, topic: String, stop: CancellationToken) {
    let consumer: StreamConsumer = match super::kafka_client(
        &config,
        |client| {
            client
                .set("group.id", format!("{}-presence", config.consumer_group()))
                .set("client.id", "cdc-gateway-presence")
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest");
        },
        |_| true,
    )
    .create()
    {
        Ok(consumer) => consumer,
        Err(e) => return tracing::warn!("presence is this replica's only: no reader: {e}"),
    };
    // The topic's partitions, once it exists.
    let mut retry = Duration::from_millis(200);
    loop {
        let found = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .ok()
            .and_then(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            })
            .filter(|partitions| !partitions.is_empty());
        if let Some(partitions) = found {
            let mut list = TopicPartitionList::new();
            for partition in partitions {
                let _ = list.add_partition_offset(&topic, partition, Offset::Beginning);
            }
            if consumer.assign(&list).is_ok() {
                break;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(Duration::from_secs(2));
    }
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = consumer.recv() => message,
        };
        let Ok(message) = message else { continue };
        let Some(Ok(replica)) = message.key().map(std::str::from_utf8) else {
            continue;
        };
        let document = match message.payload() {
            None => None,
            Some(bytes) => match serde_json::from_slice::<Document>(bytes) {
                Ok(document) => Some(document),
                Err(e) => {
                    tracing::debug!(replica, "not a presence document: {e}");
                    continue;
                }
            },
        };
        presence.apply(replica, document);
    }
}
