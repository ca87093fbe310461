//! The verdict: the broker's log read independently (a plain consumer assigned every
//! partition from the beginning to the high watermark), and every subscription period of
//! every client checked against it: no record twice, offsets rising, nothing missed after the
//! start position, snapshots equal to the log's last values, leave events exactly where a
//! row moved out of the filters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use super::clients::{ack_position, parse_event_id, Delivery, Period, Position, SubLog, Transport};
use super::workload::PARTITIONS;

/// One source record as the broker holds it.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub offset: i64,
    pub value: Value,
}

impl Record {
    fn describe(&self) -> String {
        let v = &self.value;
        format!(
            "{}:{} {} {}/{} before={} data={}",
            self.key,
            self.offset,
            v["operation"].as_str().unwrap_or("?"),
            v["entity_type"].as_str().unwrap_or("?"),
            v["entity_id"].as_str().unwrap_or("?"),
            v["before"],
            v["data"]
        )
    }
}

/// The broker's log: `source:partition` -> offset -> record.
pub struct BrokerLog {
    pub partitions: BTreeMap<String, BTreeMap<i64, Record>>,
}

/// Every `source:partition` of the run.
pub fn partition_keys(topics: &[String]) -> Vec<String> {
    topics
        .iter()
        .flat_map(|topic| (0..PARTITIONS).map(move |p| format!("{topic}:{p}")))
        .collect()
}

fn reader(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("checker-reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("reader")
}

/// Reads every partition from the beginning until it holds `counts[partition]` records
/// (what was produced to it; the high watermarks tansu reports can lag). Blocking.
pub fn read_log(brokers: &str, counts: &BTreeMap<String, usize>) -> BrokerLog {
    let consumer = reader(brokers);
    let mut assignment = TopicPartitionList::new();
    for key in counts.keys() {
        let (topic, partition) = key.rsplit_once(':').expect("topic:partition");
        assignment
            .add_partition_offset(topic, partition.parse().unwrap(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    let mut partitions: BTreeMap<String, BTreeMap<i64, Record>> = counts
        .keys()
        .map(|key| (key.clone(), BTreeMap::new()))
        .collect();
    let complete = |partitions: &BTreeMap<String, BTreeMap<i64, Record>>| {
        counts
            .iter()
            .all(|(key, count)| partitions[key].len() >= *count)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !complete(&partitions) {
        let held: BTreeMap<&String, usize> = partitions.iter().map(|(k, r)| (k, r.len())).collect();
        assert!(
            Instant::now() < deadline,
            "could not read the broker's log: {held:?} records of {counts:?}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("reading the broker's log");
        let key = format!("{}:{}", message.topic(), message.partition());
        let value = message
            .payload()
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .unwrap_or(Value::Null);
        if let Some(records) = partitions.get_mut(&key) {
            records.insert(
                message.offset(),
                Record {
                    key,
                    offset: message.offset(),
                    value,
                },
            );
        }
    }
    BrokerLog { partitions }
}

impl BrokerLog {
    /// The offset of the last record of every partition (-1 for an empty one).
    pub fn last_offsets(&self) -> BTreeMap<String, i64> {
        self.partitions
            .iter()
            .map(|(key, records)| {
                let last = records.last_key_value().map_or(-1, |(offset, _)| *offset);
                (key.clone(), last)
            })
            .collect()
    }
}

/// A broken promise, with enough to find it again.
#[derive(Debug)]
pub struct Violation {
    pub kind: &'static str,
    pub text: String,
}

/// What the run exercised, to tell a real pass from an idle one.
#[derive(Debug, Default)]
pub struct Coverage {
    pub periods: usize,
    pub acked: usize,
    pub lineages: usize,
    pub recovered_true: usize,
    pub recovered_false: usize,
    pub snapshots: usize,
    pub deliveries: usize,
    pub sse_deliveries: usize,
    pub leaves: usize,
    pub drained: usize,
    /// Periods that never got their ack, by how the connection ended, and the longest wait.
    pub unacked: BTreeMap<String, usize>,
    pub longest_unacked: Duration,
    /// The first resumes answered `recovered: false` (allowed, but each one is a reload).
    pub not_recovered: Vec<String>,
}

/// How a record concerns a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    No,
    Deliver,
    Leave,
}

struct Subscription<'a> {
    entity: &'a str,
    row: Option<&'a str>,
    filters: Option<&'a Value>,
}

impl<'a> Subscription<'a> {
    fn new(topic: &'a str, filters: Option<&'a Value>) -> Self {
        let rest = topic.strip_prefix("cdc.").unwrap_or(topic);
        let (entity, row) = match rest.split_once('.') {
            Some((entity, row)) => (entity, Some(row)),
            None => (rest, None),
        };
        Subscription {
            entity,
            row,
            filters,
        }
    }

    fn covers(&self, event: &Value) -> bool {
        event["entity_type"] == self.entity && self.row.is_none_or(|row| event["entity_id"] == row)
    }

    fn passes(&self, event: &Value) -> bool {
        self.filters.is_none_or(|filters| matches(filters, event))
    }

    /// Protocol 4 and 7: an event the filters accept is delivered; an update whose `before`
    /// image the filters accepted and whose new row they reject is delivered as a leave.
    fn expect(&self, event: &Value) -> Expect {
        if !self.covers(event) {
            return Expect::No;
        }
        if self.passes(event) {
            return Expect::Deliver;
        }
        if event["operation"] == "update" && !event["before"].is_null() {
            let mut before = event.clone();
            before["data"] = event["before"].clone();
            before["before"] = Value::Null;
            if self.passes(&before) {
                return Expect::Leave;
            }
        }
        Expect::No
    }
}

/// Protocol 4, for the filters the checker generates (scalars, arrays, `in`/`nin`/`eq`/`ne`).
fn matches(filters: &Value, event: &Value) -> bool {
    let Some(filters) = filters.as_object() else {
        return false;
    };
    filters.iter().all(|(path, condition)| {
        let value = lookup(event, path);
        match condition {
            Value::Array(options) => value.is_some_and(|v| options.contains(v)),
            Value::Object(operators) => operators.iter().all(|(op, arg)| match op.as_str() {
                "eq" => value == Some(arg),
                "ne" => value != Some(arg),
                "in" => value.is_some_and(|v| arg.as_array().is_some_and(|a| a.contains(v))),
                "nin" => !value.is_some_and(|v| arg.as_array().is_some_and(|a| a.contains(v))),
                "exists" => value.is_some() == (arg == &Value::Bool(true)),
                other => panic!("the checker's matcher lacks operator {other}"),
            }),
            scalar => value == Some(scalar),
        }
    })
}

fn lookup<'v>(event: &'v Value, path: &str) -> Option<&'v Value> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut value = if first == "row" {
        if event["data"].is_null() {
            &event["before"]
        } else {
            &event["data"]
        }
    } else {
        event.get(first)?
    };
    for part in parts {
        value = value.get(part)?;
    }
    (!value.is_null()).then_some(value)
}

/// Checks every subscription; returns the violations and what was exercised.
pub fn check(
    seed: u64,
    log: &BrokerLog,
    keys: &[String],
    subs: &[SubLog],
) -> (Vec<Violation>, Coverage) {
    let mut judge = Judge {
        seed,
        log,
        keys,
        violations: Vec::new(),
        coverage: Coverage::default(),
    };
    for sub in subs {
        judge.subscription(sub);
    }
    (judge.violations, judge.coverage)
}

struct Judge<'a> {
    seed: u64,
    log: &'a BrokerLog,
    keys: &'a [String],
    violations: Vec<Violation>,
    coverage: Coverage,
}

/// Periods joined by `recovered: true` resumes: one uninterrupted subscription as the client
/// sees it.
struct Lineage {
    /// Where it starts: the first ack's position.
    start: Position,
    /// Every (partition, offset) delivered live, and the highest per partition.
    seen: HashSet<(String, i64)>,
    highest: HashMap<String, i64>,
    /// The ack positions of periods that ran until everything had arrived.
    drained_acks: Vec<Position>,
    /// Its periods: index, where each starts (the position resumed from, or the first
    /// ack's), and its ack's position; to tell a report whether a miss was in a replay.
    periods: Vec<(usize, Position, Position)>,
}

impl Lineage {
    fn new(start: Position, period: (usize, Position, Position)) -> Self {
        Lineage {
            start,
            seen: HashSet::new(),
            highest: HashMap::new(),
            drained_acks: Vec::new(),
            periods: vec![period],
        }
    }
}

impl Lineage {
    /// Which period should have carried the record at `offset`, and how: in the replay
    /// after its ack (a resume, up to the ack's position), or live.
    fn due(&self, key: &str, offset: i64) -> String {
        let mut due = 0;
        for (at, period) in self.periods.iter().enumerate().skip(1) {
            if period.1.get(key).is_some_and(|start| *start < offset) {
                due = at;
            }
        }
        let (index, start, ack) = &self.periods[due];
        let from = start.get(key).copied().unwrap_or(-1);
        if due > 0 && ack.get(key).is_some_and(|upto| offset <= *upto) {
            format!("due in the replay of period {index} (resumed from {key}:{from})")
        } else {
            format!("due live in period {index} (started at {key}:{from})")
        }
    }
}

impl Judge<'_> {
    fn report(
        &mut self,
        kind: &'static str,
        sub: &SubLog,
        period: Option<(usize, &Period)>,
        text: String,
    ) {
        let at = period.map_or(String::new(), |(index, period)| {
            format!(" period {index} on {}", period.gateway)
        });
        self.violations.push(Violation {
            kind,
            text: format!("seed {}: {}{at}: {text}", self.seed, sub.describe()),
        });
    }

    fn record(&self, key: &str, offset: i64) -> Option<&Record> {
        self.log.partitions.get(key)?.get(&offset)
    }

    fn subscription(&mut self, sub: &SubLog) {
        let subscription = Subscription::new(&sub.topic, sub.filters.as_ref());
        let mut lineage: Option<Lineage> = None;
        for (index, period) in sub.periods.iter().enumerate() {
            self.coverage.periods += 1;
            for anomaly in &period.anomalies {
                self.report("protocol", sub, Some((index, period)), anomaly.clone());
            }
            let Some(ack) = &period.ack else {
                let end: String = period.end.chars().take(40).collect();
                *self.coverage.unacked.entry(end).or_default() += 1;
                self.coverage.longest_unacked = self.coverage.longest_unacked.max(period.lasted);
                continue;
            };
            self.coverage.acked += 1;
            self.check_ack(sub, index, period, ack);
            let position = ack_position(ack);
            let recovered = ack["recovered"].as_bool();
            // A snapshot supersedes a resume: its `recovered` says nothing.
            match recovered.filter(|_| !period.snapshot) {
                Some(true) => self.coverage.recovered_true += 1,
                Some(false) => {
                    self.coverage.recovered_false += 1;
                    if self.coverage.not_recovered.len() < 5 {
                        self.coverage.not_recovered.push(format!(
                            "{} period {index} on {}: since {:?}, ack {ack}",
                            sub.describe(),
                            period.gateway,
                            period.since
                        ));
                    }
                }
                None => {}
            }
            let resumed = period.since.is_some() && !period.snapshot && recovered == Some(true);
            // Where this period starts: the position resumed from, else the ack's.
            let start = match (&period.since, resumed) {
                (Some(since), true) => since.clone(),
                _ => position.clone(),
            };
            match lineage.as_mut() {
                Some(current) if resumed => {
                    current
                        .periods
                        .push((index, start.clone(), position.clone()))
                }
                _ => {
                    if let Some(done) = lineage.take() {
                        self.complete(sub, &subscription, &done);
                    }
                    self.coverage.lineages += 1;
                    let first = (index, start.clone(), position.clone());
                    lineage = Some(Lineage::new(start.clone(), first));
                }
            }
            let current = lineage.as_mut().unwrap();
            if period.drained {
                self.coverage.drained += 1;
                current.drained_acks.push(position.clone());
            }
            if period.snapshot {
                self.coverage.snapshots += 1;
                self.check_snapshot(sub, &subscription, index, period, ack, &position);
            }
            let mut live = Vec::new();
            for (at, delivery) in period.deliveries.iter().enumerate() {
                self.coverage.deliveries += 1;
                if sub.transport == Transport::Sse {
                    self.coverage.sse_deliveries += 1;
                }
                if self.check_delivery(sub, &subscription, index, period, delivery)
                    && !delivery.snapshot
                {
                    live.push((at, delivery));
                }
            }
            let current = lineage.as_mut().unwrap();
            let mut findings = Vec::new();
            for (at, delivery) in live {
                let key = delivery.key();
                let described = self
                    .record(&key, delivery.offset)
                    .map_or_else(|| format!("{key}:{}", delivery.offset), Record::describe);
                if period.snapshot && period.synced_at.is_none_or(|synced| at < synced) {
                    findings.push(("synced", format!("live event before synced: {described}")));
                }
                if let Some(from) = start.get(&key) {
                    if delivery.offset <= *from {
                        findings.push((
                            if resumed { "below since" } else { "below ack" },
                            format!("delivered at or below the start position {key}:{from}: {described}"),
                        ));
                    }
                }
                if !current.seen.insert((key.clone(), delivery.offset)) {
                    findings.push(("duplicate", format!("delivered twice: {described}")));
                    continue;
                }
                let highest = current.highest.entry(key.clone()).or_insert(i64::MIN);
                if delivery.offset < *highest {
                    findings.push((
                        "order",
                        format!("offset fell from {key}:{highest} to {described}"),
                    ));
                }
                *highest = (*highest).max(delivery.offset);
            }
            for (kind, text) in findings {
                self.report(kind, sub, Some((index, period)), text);
            }
        }
        if let Some(done) = lineage.take() {
            self.complete(sub, &subscription, &done);
        }
    }

    /// The ack names every partition of every source topic; a resume says whether it
    /// recovered, a snapshot how many rows it has.
    fn check_ack(&mut self, sub: &SubLog, index: usize, period: &Period, ack: &Value) {
        let mut problems = Vec::new();
        if ack["topic"] != sub.topic.as_str() {
            problems.push(format!("ack for another topic: {ack}"));
        }
        match ack["position"].as_object() {
            None => problems.push(format!("ack without a position: {ack}")),
            Some(position) => {
                let got: Vec<&String> = position.keys().collect();
                let want: Vec<&String> = self.keys.iter().collect();
                let mut got_sorted = got.clone();
                got_sorted.sort();
                let mut want_sorted = want.clone();
                want_sorted.sort();
                if got_sorted != want_sorted || position.values().any(|v| v.as_i64().is_none()) {
                    problems.push(format!(
                        "ack position must name every source partition {want_sorted:?}: {ack}"
                    ));
                }
            }
        }
        if period.since.is_some() && !period.snapshot && !ack["recovered"].is_boolean() {
            problems.push(format!("a resume's ack without recovered: {ack}"));
        }
        if period.snapshot
            && !(ack["snapshot"]["rows"].is_u64() && ack["snapshot"]["complete"].is_boolean())
        {
            problems.push(format!(
                "a snapshot's ack without snapshot {{rows, complete}}: {ack}"
            ));
        }
        for problem in problems {
            self.report("ack", sub, Some((index, period)), problem);
        }
    }

    /// The delivery names a record of the log, carries its event, concerns the subscription,
    /// and is flagged a leave exactly when it is one. False if it cannot be placed.
    fn check_delivery(
        &mut self,
        sub: &SubLog,
        subscription: &Subscription,
        index: usize,
        period: &Period,
        delivery: &Delivery,
    ) -> bool {
        let key = delivery.key();
        let Some(record) = self.record(&key, delivery.offset).cloned() else {
            self.report(
                "unknown record",
                sub,
                Some((index, period)),
                format!(
                    "{key}:{} is not in the broker's log: {:?}",
                    delivery.offset, delivery.payload
                ),
            );
            return false;
        };
        let mut problems = Vec::new();
        for field in ["entity_type", "entity_id", "operation", "data", "before"] {
            if delivery.payload[field] != record.value[field] {
                problems.push((
                    "payload",
                    format!(
                        "payload {field} is {} but the record has {}: {}",
                        delivery.payload[field],
                        record.value[field],
                        record.describe()
                    ),
                ));
            }
        }
        if delivery.leave {
            self.coverage.leaves += 1;
        }
        match (
            subscription.expect(&record.value),
            delivery.snapshot,
            delivery.leave,
        ) {
            (_, true, true) => problems.push((
                "leave",
                format!("a snapshot row flagged leave: {}", record.describe()),
            )),
            (_, true, false) => {}
            (Expect::No, false, _) => problems.push((
                "unexpected",
                format!(
                    "delivered although the topic or filters exclude it: {}",
                    record.describe()
                ),
            )),
            (Expect::Deliver, false, true) => problems.push((
                "leave",
                format!(
                    "flagged leave although the new row matches: {}",
                    record.describe()
                ),
            )),
            (Expect::Leave, false, false) => problems.push((
                "leave",
                format!(
                    "a row that left the filters delivered without leave: {}",
                    record.describe()
                ),
            )),
            _ => {}
        }
        if sub.transport == Transport::Sse {
            match delivery
                .sse_id
                .as_deref()
                .map(|id| (id, parse_event_id(id)))
            {
                Some((id, Some(position))) => {
                    let keys: Vec<&String> = position.keys().collect();
                    let mut want: Vec<&String> = self.keys.iter().collect();
                    want.sort();
                    if keys != want {
                        problems.push((
                            "sse id",
                            format!("id {id} does not name every source partition"),
                        ));
                    }
                    // A live event raises the stream's position to its own offset (a
                    // snapshot row is older than the position).
                    if !delivery.snapshot && position.get(&key) != Some(&delivery.offset) {
                        problems.push((
                            "sse id",
                            format!(
                                "id {id} does not end at the event's own offset {key}:{}",
                                delivery.offset
                            ),
                        ));
                    }
                }
                Some((id, None)) => problems.push(("sse id", format!("malformed id {id:?}"))),
                None => {}
            }
        }
        for (kind, text) in problems {
            self.report(kind, sub, Some((index, period)), text);
        }
        true
    }

    /// Protocol 7: the snapshot rows are the last event of each row (per the log) as of the
    /// ack's position, those the filters accept, before `synced`.
    fn check_snapshot(
        &mut self,
        sub: &SubLog,
        subscription: &Subscription,
        index: usize,
        period: &Period,
        ack: &Value,
        position: &Position,
    ) {
        let mut problems = Vec::new();
        // The last record of every row of the entity, as of the position.
        let mut last: BTreeMap<String, &Record> = BTreeMap::new();
        for (key, records) in &self.log.partitions {
            let Some(upto) = position.get(key) else {
                continue;
            };
            for record in records.range(..=upto).map(|(_, r)| r) {
                if subscription.covers(&record.value) {
                    let id = record.value["entity_id"].as_str().unwrap_or("").to_owned();
                    last.insert(id, record);
                }
            }
        }
        let expected: BTreeMap<&str, &Record> = last
            .iter()
            .filter(|(_, record)| subscription.passes(&record.value))
            .map(|(id, record)| (id.as_str(), *record))
            .collect();
        let synced = period.synced_at.unwrap_or(period.deliveries.len());
        let mut rows = HashSet::new();
        for (at, delivery) in period.deliveries.iter().enumerate() {
            if !delivery.snapshot {
                continue;
            }
            if at >= synced {
                problems.push(format!(
                    "a snapshot row after synced: {}:{}",
                    delivery.key(),
                    delivery.offset
                ));
            }
            let id = delivery.payload["entity_id"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            let got = format!("{}:{}", delivery.key(), delivery.offset);
            match expected.get(id.as_str()) {
                Some(record) if record.key == delivery.key() && record.offset == delivery.offset => {}
                Some(record) => problems.push(format!(
                    "snapshot row {id} is {got}, but its last value as of the position is {}",
                    record.describe()
                )),
                None => problems.push(format!(
                    "snapshot row {id} ({got}) should not be in the snapshot (last value as of the position: {})",
                    last.get(&id).map_or("none".into(), |r| r.describe())
                )),
            }
            if !rows.insert(id.clone()) {
                problems.push(format!("snapshot row {id} sent twice"));
            }
        }
        if period.synced_at.is_some() {
            if ack["snapshot"]["rows"].as_u64() != Some(rows.len() as u64) {
                problems.push(format!(
                    "{} snapshot rows arrived, the ack says {}",
                    rows.len(),
                    ack["snapshot"]
                ));
            }
            if ack["snapshot"]["complete"] == true {
                for (id, record) in &expected {
                    if !rows.contains(*id) {
                        problems.push(format!(
                            "a complete snapshot lacks row {id}: {}",
                            record.describe()
                        ));
                    }
                }
            }
        } else if period.drained {
            problems.push("no synced after the snapshot".into());
        }
        for problem in problems {
            self.report("snapshot", sub, Some((index, period)), problem);
        }
    }

    /// Every record the subscription should have received after its start, up to the highest
    /// offset it saw on that partition (or a drained ack's position), was delivered.
    fn complete(&mut self, sub: &SubLog, subscription: &Subscription, lineage: &Lineage) {
        let mut missed = Vec::new();
        for key in self.keys {
            let Some(&from) = lineage.start.get(key) else {
                continue;
            };
            let upto = lineage
                .drained_acks
                .iter()
                .filter_map(|ack| ack.get(key).copied())
                .chain(lineage.highest.get(key).copied())
                .max();
            let Some(upto) = upto.filter(|upto| *upto > from) else {
                continue;
            };
            let Some(records) = self.log.partitions.get(key) else {
                continue;
            };
            for (offset, record) in records.range(from + 1..=upto) {
                let expect = subscription.expect(&record.value);
                if expect != Expect::No && !lineage.seen.contains(&(key.clone(), *offset)) {
                    let kind = match expect {
                        Expect::Leave => "missed leave",
                        _ => "missed",
                    };
                    missed.push((
                        kind,
                        format!(
                            "missed (start {key}:{from}, seen up to {upto}), {}: {}",
                            lineage.due(key, *offset),
                            record.describe()
                        ),
                    ));
                }
            }
        }
        let index = lineage.periods[0].0;
        let period = &sub.periods[index];
        let periods = lineage
            .periods
            .iter()
            .map(|(p, _, _)| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        for (kind, text) in missed {
            self.report(
                kind,
                sub,
                Some((index, period)),
                format!("lineage of periods {periods}: {text}"),
            );
        }
    }
}

mod tests {
    use super::*;
    use serde_json::json;

    fn event(id: &str, operation: &str, before: Option<&str>, after: Option<&str>) -> Value {
        let row = |tenant: Option<&str>| tenant.map_or(Value::Null, |t| json!({"tenant": t}));
        json!({"entity_type": "order", "entity_id": id, "operation": operation,
               "data": row(after), "before": row(before)})
    }

    /// One partition `t:0`: row 1 inserted in a, row 2 in b, row 1 moved to b, row 1 updated.
    fn log() -> BrokerLog {
        let values = [
            event("1", "insert", None, Some("a")),
            event("2", "insert", None, Some("b")),
            event("1", "update", Some("a"), Some("b")),
            event("1", "update", Some("b"), Some("b")),
        ];
        let records = values
            .into_iter()
            .enumerate()
            .map(|(offset, value)| {
                let offset = offset as i64;
                let key = "t:0".to_owned();
                (offset, Record { key, offset, value })
            })
            .collect();
        BrokerLog {
            partitions: BTreeMap::from([("t:0".to_owned(), records)]),
        }
    }

    fn delivered(log: &BrokerLog, offset: i64, snapshot: bool, leave: bool) -> Delivery {
        Delivery {
            source: "t".into(),
            partition: 0,
            offset,
            payload: log.partitions["t:0"][&offset].value.clone(),
            snapshot,
            leave,
            sse_id: None,
        }
    }

    fn period(ack: Value, since: Option<i64>, deliveries: Vec<Delivery>) -> Period {
        Period {
            gateway: "G".into(),
            since: since.map(|o| Position::from([("t:0".to_owned(), o)])),
            ack: Some(ack),
            deliveries,
            ..Period::default()
        }
    }

    fn kinds(subs: &[SubLog]) -> Vec<&'static str> {
        let (violations, _) = check(1, &log(), &["t:0".to_owned()], subs);
        let mut kinds: Vec<&str> = violations.iter().map(|v| v.kind).collect();
        kinds.sort();
        kinds
    }

    fn sub(filters: Option<Value>, periods: Vec<Period>) -> SubLog {
        SubLog {
            client: 0,
            transport: Transport::Ws,
            topic: "cdc.order".into(),
            filters,
            periods,
        }
    }

    fn ack(offset: i64, recovered: Option<bool>) -> Value {
        let mut ack = json!({"type": "ack", "action": "subscribe", "topic": "cdc.order",
                            "position": {"t:0": offset}});
        if let Some(recovered) = recovered {
            ack["recovered"] = recovered.into();
        }
        ack
    }

    #[test]
    fn a_faithful_history_passes() {
        let log = log();
        let first = period(ack(0, None), None, vec![delivered(&log, 1, false, false)]);
        let resumed = period(
            ack(3, Some(true)),
            Some(1),
            vec![
                delivered(&log, 2, false, false),
                delivered(&log, 3, false, false),
            ],
        );
        assert_eq!(
            kinds(&[sub(None, vec![first, resumed])]),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn repeats_gaps_and_replays_below_since_are_caught() {
        let log = log();
        // Offset 1 again after a recovered resume from 1, and offset 2 skipped.
        let first = period(ack(0, None), None, vec![delivered(&log, 1, false, false)]);
        let resumed = period(
            ack(3, Some(true)),
            Some(1),
            vec![
                delivered(&log, 1, false, false),
                delivered(&log, 3, false, false),
            ],
        );
        assert_eq!(
            kinds(&[sub(None, vec![first, resumed])]),
            ["below since", "duplicate", "missed"]
        );
    }

    #[test]
    fn leaves_and_snapshots_are_held_to_the_log() {
        let log = log();
        let filters = Some(json!({"data.tenant": "a"}));
        // Row 1 leaves tenant a at offset 2: that must be a leave event, and offset 3 is not
        // delivered at all. The snapshot as of offset 0 holds row 1 only.
        let mut snapshot = period(
            json!({"type": "ack", "action": "subscribe", "topic": "cdc.order",
                   "position": {"t:0": 0}, "snapshot": {"rows": 1, "complete": true}}),
            None,
            vec![
                delivered(&log, 0, true, false),
                delivered(&log, 2, false, true),
            ],
        );
        snapshot.snapshot = true;
        snapshot.synced_at = Some(1);
        assert_eq!(
            kinds(&[sub(filters.clone(), vec![snapshot])]),
            Vec::<&str>::new()
        );

        let mut stale = period(
            json!({"type": "ack", "action": "subscribe", "topic": "cdc.order",
                   "position": {"t:0": 3}, "snapshot": {"rows": 1, "complete": true}}),
            None,
            vec![delivered(&log, 0, true, false)],
        );
        stale.snapshot = true;
        stale.synced_at = Some(1);
        let plain = period(
            ack(1, None),
            None,
            vec![
                delivered(&log, 2, false, false),
                delivered(&log, 3, false, false),
            ],
        );
        assert_eq!(
            kinds(&[sub(filters, vec![stale, plain])]),
            ["leave", "snapshot", "unexpected"]
        );
    }

    fn update(before: &str, after: &str) -> Value {
        json!({"entity_type": "order", "entity_id": "3", "operation": "update",
               "data": {"tenant": after}, "before": {"tenant": before}})
    }

    #[test]
    fn leave_is_an_update_out_of_the_filters() {
        let filters = json!({"data.tenant": "a"});
        let sub = Subscription::new("cdc.order", Some(&filters));
        assert_eq!(sub.expect(&update("a", "a")), Expect::Deliver);
        assert_eq!(sub.expect(&update("a", "b")), Expect::Leave);
        assert_eq!(sub.expect(&update("b", "a")), Expect::Deliver);
        assert_eq!(sub.expect(&update("b", "b")), Expect::No);
        let row = json!({"row.tenant": "a"});
        let sub = Subscription::new("cdc.order.3", Some(&row));
        assert_eq!(sub.expect(&update("a", "b")), Expect::Leave);
        let delete = json!({"entity_type": "order", "entity_id": "3", "operation": "delete",
                            "data": null, "before": {"tenant": "a"}});
        assert_eq!(sub.expect(&delete), Expect::Deliver);
        let other_row = Subscription::new("cdc.order.4", None);
        assert_eq!(other_row.expect(&delete), Expect::No);
    }
}
