//! What the bench sends and what each client must therefore receive. Events are numbered
//! `seq = 0, 1, 2, ...` within a run, and everything about an event (its row id, bucket,
//! whether it passes the filter) is a function of its `seq`. So the expected stream of every
//! client follows from the set of sequence numbers Kafka acknowledged, and loss, duplicates
//! and strays are counted exactly rather than estimated.

use std::fmt::Write as _;

use clap::ValueEnum;
use serde::Serialize;
use serde_json::{json, Value};

/// Entity of every benchmark event: clients subscribe to `cdc.order` or `cdc.order.<id>`.
pub const ENTITY: &str = "order";
/// Entity of the probe events that confirm the gateway reads past a known point.
pub const PROBE_ENTITY: &str = "bench_probe";
/// Run number of the rows seeded before a churn run (scenario f): a steady client that
/// received one would count it as a stray.
pub const SEED_RUN: u32 = u32::MAX;
/// Share of events the filter mix matches: `bucket = seq % 100 < FILTER_BUCKETS`.
const FILTER_BUCKETS: u64 = 10;

/// How the clients subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// Every client on `cdc.order`: each event goes to every client.
    Entity,
    /// Client `i` on `cdc.order.<i>`; event `seq` belongs to row `seq % connections`.
    Row,
    /// Every client on `cdc.order` with a 3-predicate filter that matches 10% of events.
    Filter,
    /// Client `i` on `cdc.order.idle-<i>`, which never gets an event: connections held open.
    Idle,
}

impl Mix {
    /// The name the command line and the result file use.
    pub fn name(self) -> &'static str {
        match self {
            Mix::Entity => "entity",
            Mix::Row => "row",
            Mix::Filter => "filter",
            Mix::Idle => "idle",
        }
    }

    /// The topic and filters client `client` subscribes with.
    pub fn subscription(self, client: u32) -> (String, Option<Value>) {
        match self {
            Mix::Entity => (format!("cdc.{ENTITY}"), None),
            Mix::Row => (format!("cdc.{ENTITY}.{client}"), None),
            Mix::Filter => (
                format!("cdc.{ENTITY}"),
                Some(json!({
                    "operation": "update",
                    "data.bucket": {"lt": FILTER_BUCKETS},
                    "data.region": {"in": ["eu", "us"]},
                })),
            ),
            Mix::Idle => (format!("cdc.{ENTITY}.idle-{client}"), None),
        }
    }

    /// Where event `seq` falls in the stream client `client` should receive: `Some(k)` when it
    /// is the client's `k`-th expected event, `None` when the subscription excludes it. Dense
    /// per client, so a client tracks what it has seen in a bitset no larger than its share.
    pub fn slot(self, client: u32, clients: u32, seq: u64) -> Option<u64> {
        match self {
            Mix::Entity => Some(seq),
            Mix::Row => {
                (row_of(seq, clients) == u64::from(client)).then(|| seq / u64::from(clients))
            }
            Mix::Filter => {
                let bucket = seq % 100;
                (bucket < FILTER_BUCKETS).then(|| seq / 100 * FILTER_BUCKETS + bucket)
            }
            Mix::Idle => None,
        }
    }

    /// Deliveries one event causes on average: turns a delivery rate into an event rate.
    pub fn recipients_per_event(self, clients: u32) -> f64 {
        match self {
            Mix::Entity => f64::from(clients),
            Mix::Filter => f64::from(clients) * FILTER_BUCKETS as f64 / 100.0,
            Mix::Row => 1.0,
            Mix::Idle => 0.0,
        }
    }

    /// Expected deliveries per client, given the sequence numbers Kafka acknowledged.
    pub fn expected(self, clients: u32, acknowledged: impl Iterator<Item = u64>) -> Vec<u64> {
        let mut expected = vec![0; clients as usize];
        match self {
            Mix::Idle => {}
            Mix::Row => {
                for seq in acknowledged {
                    expected[row_of(seq, clients) as usize] += 1;
                }
            }
            Mix::Entity | Mix::Filter => {
                // Every client has the same subscription, so one count serves all.
                let count = acknowledged
                    .filter(|&seq| self.slot(0, clients, seq).is_some())
                    .count() as u64;
                expected.fill(count);
            }
        }
        expected
    }
}

/// Wall-clock epoch microseconds: the producer stamps `sent_us` with it and clients subtract
/// it from their own reading, so both ends use the same clock of this one machine.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The row (entity id) of event `seq`: ids cycle over the client numbers, so under the row
/// mix every client's topic gets an equal share.
pub fn row_of(seq: u64, clients: u32) -> u64 {
    seq % u64::from(clients.max(1))
}

/// Writes the simple-envelope record of event `seq` into `out` (cleared first); its row id
/// cycles over `ids` rows (the client count, or scenario f's seeded rows). `sent_us` is the
/// producer's clock in epoch microseconds; latency is measured against it.
pub fn encode_event(out: &mut String, run: u32, seq: u64, ids: u32, sent_us: u64, pad: &str) {
    let id = row_of(seq, ids);
    out.clear();
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        r#"{{"entity_type":"{ENTITY}","entity_id":"{id}","operation":"update","data":{{"id":{id},"seq":{seq},"run":{run},"sent_us":{sent_us},"bucket":{bucket},"region":"eu","status":"paid","amount":{amount}"#,
        bucket = seq % 100,
        amount = seq % 1000,
    );
    if !pad.is_empty() {
        let _ = write!(out, r#","pad":"{pad}""#);
    }
    let _ = write!(out, r#"}},"timestamp":{}}}"#, sent_us / 1000);
}

/// The record of a probe event for one source partition.
pub fn encode_probe(run: u32, partition: i32) -> String {
    json!({
        "entity_type": PROBE_ENTITY,
        "entity_id": format!("p{partition}"),
        "operation": "update",
        "data": {"run": run, "partition": partition},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_per_client() {
        let clients = 7;
        for mix in [Mix::Entity, Mix::Row, Mix::Filter] {
            for client in 0..clients {
                let slots: Vec<u64> = (0..1000)
                    .filter_map(|seq| mix.slot(client, clients, seq))
                    .collect();
                let dense: Vec<u64> = (0..slots.len() as u64).collect();
                assert_eq!(slots, dense, "{mix:?} client {client}");
                let expected = mix.expected(clients, 0..1000)[client as usize];
                assert_eq!(expected, slots.len() as u64, "{mix:?} client {client}");
            }
        }
        assert_eq!(Mix::Filter.expected(3, 0..1000), vec![100; 3]);
        assert_eq!(Mix::Idle.expected(3, 0..1000), vec![0; 3]);
    }

    #[test]
    fn events_are_json_the_filter_sees_as_intended() {
        let mut out = String::new();
        encode_event(&mut out, 2, 1234, 10, 1_700_000_000_123_456, "xx");
        let event: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(event["entity_id"], "4");
        assert_eq!(event["data"]["seq"], 1234);
        assert_eq!(event["data"]["run"], 2);
        assert_eq!(event["data"]["bucket"], 34);
        assert_eq!(event["data"]["pad"], "xx");
        assert_eq!(event["timestamp"], 1_700_000_000_123u64);
        let probe: Value = serde_json::from_str(&encode_probe(1, 3)).unwrap();
        assert_eq!(probe["entity_type"], PROBE_ENTITY);
        assert_eq!(probe["data"]["partition"], 3);
    }
}
