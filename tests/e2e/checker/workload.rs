//! The records the checker produces: a seeded history of a few rows per entity, each row
//! inserted, updated many times (sometimes moved to the other tenant, so that filtered
//! subscribers see it leave) and sometimes deleted and inserted again. A row always goes to
//! the same partition (its id modulo the partition count), as a keyed producer would send it.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::support::Producer;

/// Partitions of each source topic.
pub const PARTITIONS: i32 = 3;
/// The entity carried by each source topic, and how many row ids it uses.
pub const ENTITIES: [(&str, u32); 2] = [("order", 9), ("customer", 6)];
pub const TENANTS: [&str; 2] = ["a", "b"];
pub const STATUSES: [&str; 3] = ["new", "paid", "shipped"];

#[derive(Clone)]
struct Row {
    tenant: &'static str,
    status: &'static str,
    v: u64,
}

impl Row {
    fn json(&self, id: u32) -> Value {
        json!({"id": id, "tenant": self.tenant, "status": self.status, "v": self.v})
    }
}

/// One record to produce: the index of its source topic, its partition, key and value.
pub struct Planned {
    pub topic: usize,
    pub partition: i32,
    pub key: String,
    pub value: String,
}

pub struct Workload {
    rng: StdRng,
    /// A counter stamped into every row image, so every record's payload is unique.
    v: u64,
    /// The current state of every row, per source topic, `None` when absent or deleted.
    rows: Vec<Vec<Option<Row>>>,
}

impl Workload {
    pub fn new(seed: u64) -> Self {
        Workload {
            rng: StdRng::seed_from_u64(seed),
            v: 0,
            rows: ENTITIES
                .iter()
                .map(|(_, ids)| vec![None; *ids as usize + 1])
                .collect(),
        }
    }

    pub fn batch(&mut self, count: usize) -> Vec<Planned> {
        (0..count).map(|_| self.next()).collect()
    }

    pub fn next(&mut self) -> Planned {
        let topic = self.rng.gen_range(0..ENTITIES.len());
        let (entity, ids) = ENTITIES[topic];
        let id = self.rng.gen_range(1..=ids);
        self.v += 1;
        let v = self.v;
        let current = self.rows[topic][id as usize].clone();
        let (operation, before, after) = match current {
            None => {
                let row = Row {
                    tenant: TENANTS[self.rng.gen_range(0..TENANTS.len())],
                    status: STATUSES[0],
                    v,
                };
                ("insert", None, Some(row))
            }
            Some(row) if self.rng.gen_bool(0.08) => ("delete", Some(row), None),
            Some(row) => {
                let mut next = row.clone();
                if self.rng.gen_bool(0.3) {
                    next.tenant = if row.tenant == "a" { "b" } else { "a" };
                }
                next.status = STATUSES[self.rng.gen_range(0..STATUSES.len())];
                next.v = v;
                ("update", Some(row), Some(next))
            }
        };
        self.rows[topic][id as usize] = after.clone();
        let value = json!({
            "entity_type": entity,
            "entity_id": id.to_string(),
            "operation": operation,
            "data": after.map_or(Value::Null, |row| row.json(id)),
            "before": before.map_or(Value::Null, |row| row.json(id)),
            "timestamp": "2026-11-22T10:00:00Z",
        });
        Planned {
            topic,
            partition: (id % PARTITIONS as u32) as i32,
            key: id.to_string(),
            value: value.to_string(),
        }
    }
}

/// Produces a batch, all records in flight at once (the producer keeps each partition's
/// order), and counts them per `topic:partition`.
pub async fn produce(
    producer: &Producer,
    topics: &[String],
    batch: &[Planned],
    counts: &mut BTreeMap<String, usize>,
) {
    let sends = batch.iter().map(|record| {
        producer.send_to(
            &topics[record.topic],
            Some(record.partition),
            Some(&record.key),
            Some(&record.value),
        )
    });
    futures_util::future::join_all(sends).await;
    for record in batch {
        *counts
            .entry(format!("{}:{}", topics[record.topic], record.partition))
            .or_default() += 1;
    }
}
