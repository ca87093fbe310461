//! The table store on disk: one fjall keyspace (an LSM tree) holding every entity's rows, the
//! offset up to which each source partition was applied, and each entity's row count, so that
//! one atomic batch moves rows, counts and offsets together and a restart resumes exactly where
//! the store stopped. fjall because it builds a table of a million 500-byte rows here at
//! 259,000 rows/s with lz4 blocks at 0.95x the row bytes on disk, against redb's 127,000
//! rows/s at 2.06x (docs/tables.md); and its snapshots are points in time that readers page
//! through while the consumer keeps writing.
//!
//! Keys: a row is `[entity length][entity][id]` (entities are 1..=128 bytes); metadata starts
//! with a 0 byte, which no row key does. A row's value is a small header (operation, source
//! position, log position) and then the payload clients receive, serialized once when applied.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use crate::event::{ChangeEvent, FieldName, Operation, Row, RowSeed};
use crate::position::{Partition, SourcePosition};

/// The layout of keys and values; a store written with another is rebuilt.
const FORMAT: &[u8] = b"cdc-gateway-tables/1";

const META: u8 = 0;
const META_FORMAT: u8 = b'f';
const META_OFFSET: u8 = b'o';
const META_COUNT: u8 = b'c';

/// Why the table store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("table store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: fjall::Error,
    },
    #[error("table store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("table store {path} is in use by another process (each replica needs its own --table-store-path)")]
    Locked { path: String },
    #[error("table store full: {used} bytes on disk with {pending} more to write, bound {bound} (--table-store-max-mib)")]
    Full { used: u64, pending: u64, bound: u64 },
    #[error("table store write failed: {0}")]
    Write(#[source] fjall::Error),
    #[error("table store read failed: {0}")]
    Read(#[source] fjall::Error),
    #[error("table store holds an unreadable row: {0}")]
    Corrupt(String),
}

/// Where a partition stands in the store: the next offset to apply, and whether every record
/// of it from its beginning was applied (what `complete: true` rests on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub next: i64,
    pub complete: bool,
}

/// What a store held when it was opened.
#[derive(Debug, Default)]
pub struct Opened {
    pub partitions: HashMap<Partition, Applied>,
    pub counts: HashMap<String, i64>,
    /// Why an existing store was thrown away and is rebuilt, if it was.
    pub rebuilt: Option<String>,
}

pub struct Store {
    keyspace: Keyspace,
    rows: PartitionHandle,
    path: PathBuf,
    /// Removed with the store: no --table-store-path was given.
    temporary: bool,
    max_bytes: u64,
    /// Held while open: a second process on the same directory would corrupt it.
    _lock: File,
}

/// One stored write: a row's new value, or its removal.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

impl Store {
    /// Opens (or creates) the store at `path`. A store that cannot be opened or read, or was
    /// written in another format, is deleted and created empty (it is rebuilt from the
    /// topics), and `Opened::rebuilt` says why.
    pub fn open(
        path: &Path,
        temporary: bool,
        max_bytes: u64,
        cache_bytes: u64,
    ) -> Result<(Self, Opened), StoreError> {
        let shown = path.display().to_string();
        let io = |source| StoreError::Io {
            path: shown.clone(),
            source,
        };
        std::fs::create_dir_all(path).map_err(io)?;
        let lock = lock(path).map_err(io)?.ok_or_else(|| StoreError::Locked {
            path: shown.clone(),
        })?;
        let data = path.join("data");
        let mut rebuilt = None;
        let opened = match Self::open_data(&data, cache_bytes) {
            Ok((keyspace, rows)) => match load(&rows) {
                Ok(found) => Some((keyspace, rows, found)),
                Err(why) => {
                    rebuilt = Some(why);
                    None
                }
            },
            Err(e) => {
                rebuilt = Some(e.to_string());
                None
            }
        };
        let (keyspace, rows, mut found) = match opened {
            Some(opened) => opened,
            None => {
                // Reopened empty: the old files are gone before fjall sees the directory.
                if data.exists() {
                    std::fs::remove_dir_all(&data).map_err(io)?;
                }
                let (keyspace, rows) =
                    Self::open_data(&data, cache_bytes).map_err(|source| StoreError::Open {
                        path: shown.clone(),
                        source,
                    })?;
                (keyspace, rows, Opened::default())
            }
        };
        found.rebuilt = rebuilt;
        let store = Self {
            keyspace,
            rows,
            path: path.to_owned(),
            temporary,
            max_bytes,
            _lock: lock,
        };
        if found.partitions.is_empty() {
            store.commit(vec![(meta(META_FORMAT, b""), Some(FORMAT.to_vec()))])?;
        }
        Ok((store, found))
    }

    fn open_data(data: &Path, cache_bytes: u64) -> fjall::Result<(Keyspace, PartitionHandle)> {
        let keyspace = fjall::Config::new(data)
            .cache_size(cache_bytes)
            .max_write_buffer_size(32 << 20)
            .max_journaling_size(64 << 20)
            // Batches reach the OS as they commit (a crashed process loses nothing); the disk
            // is synced once a second (a power cut loses at most that, and the restart
            // catches up from the offsets stored with the rows it kept).
            .fsync_ms(Some(1000))
            .open()?;
        let rows = keyspace.open_partition("tables", PartitionCreateOptions::default())?;
        Ok((keyspace, rows))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Stored>, StoreError> {
        match self.rows.get(key).map_err(StoreError::Read)? {
            Some(value) => Stored::decode(&value).map(Some),
            None => Ok(None),
        }
    }

    /// Keys of every row of `entity` (for a truncate).
    pub fn keys(&self, entity: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.rows
            .prefix(entity_prefix(entity))
            .map(|item| item.map(|(key, _)| key.to_vec()).map_err(StoreError::Read))
            .collect()
    }

    /// Writes `writes` in one atomic batch, handed to the OS before it returns; refused while
    /// the store is at its bound.
    pub fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let pending: u64 = writes
            .iter()
            .map(|(k, v)| (k.len() + v.as_ref().map_or(0, Vec::len)) as u64)
            .sum();
        let used = self.disk_bytes();
        if used + pending > self.max_bytes {
            return Err(StoreError::Full {
                used,
                pending,
                bound: self.max_bytes,
            });
        }
        let mut batch = self.keyspace.batch();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(&self.rows, key, value),
                None => batch.remove(&self.rows, key),
            }
        }
        batch.commit().map_err(StoreError::Write)?;
        self.keyspace
            .persist(PersistMode::Buffer)
            .map_err(StoreError::Write)
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes the store's files take on disk: blocks allocated, not lengths (fjall
    /// preallocates its journal as a sparse file of 32 MiB).
    pub fn disk_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            use std::os::unix::fs::MetadataExt;
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => walk(&entry.path()),
                    Ok(meta) => meta.blocks() * 512,
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.path)
    }

    /// A point-in-time view of everything committed so far.
    pub fn snapshot(&self) -> fjall::Snapshot {
        self.rows.snapshot()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Takes the directory's lock file; `None` when another process holds it.
fn lock(path: &Path) -> std::io::Result<Option<File>> {
    use std::os::fd::AsRawFd;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.join("gateway.lock"))?;
    // SAFETY: flock on a file descriptor this function owns.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    Ok(taken.then_some(file))
}

/// Reads the partitions' offsets and the entities' counts; `Err` says why the store cannot be
/// trusted (another format, unreadable metadata).
fn load(rows: &PartitionHandle) -> Result<Opened, String> {
    let mut found = Opened::default();
    let mut format = None;
    for item in rows.prefix([META]) {
        let (key, value) = item.map_err(|e| format!("unreadable: {e}"))?;
        match key.get(1) {
            Some(&META_FORMAT) => format = Some(value.to_vec()),
            Some(&META_OFFSET) => {
                let (partition, applied) = decode_offset(&key[2..], &value)
                    .ok_or_else(|| "unreadable partition offset".to_owned())?;
                found.partitions.insert(partition, applied);
            }
            Some(&META_COUNT) => {
                let entity = std::str::from_utf8(&key[2..])
                    .map_err(|_| "unreadable entity name".to_owned())?;
                let count = <[u8; 8]>::try_from(&value[..])
                    .map_err(|_| "unreadable row count".to_owned())?;
                found
                    .counts
                    .insert(entity.to_owned(), i64::from_be_bytes(count));
            }
            _ => return Err("unknown metadata".to_owned()),
        }
    }
    match format {
        None if found.partitions.is_empty() => Ok(found),
        Some(format) if format == FORMAT => Ok(found),
        _ => Err("written in another format".to_owned()),
    }
}

fn meta(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + rest.len());
    key.extend_from_slice(&[META, kind]);
    key.extend_from_slice(rest);
    key
}

pub fn offset_write(partition: Partition, applied: Applied) -> Write {
    let mut rest = partition.topic.as_str().as_bytes().to_vec();
    rest.push(0);
    rest.extend_from_slice(&partition.partition.to_be_bytes());
    let mut value = applied.next.to_be_bytes().to_vec();
    value.push(u8::from(applied.complete));
    (meta(META_OFFSET, &rest), Some(value))
}

fn decode_offset(rest: &[u8], value: &[u8]) -> Option<(Partition, Applied)> {
    let split = rest.iter().position(|b| *b == 0)?;
    let topic = std::str::from_utf8(&rest[..split]).ok()?;
    let partition = i32::from_be_bytes(rest.get(split + 1..split + 5)?.try_into().ok()?);
    let next = i64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let complete = *value.get(8)? == 1;
    Some((Partition::new(topic, partition), Applied { next, complete }))
}

pub fn count_write(entity: &str, count: i64) -> Write {
    (
        meta(META_COUNT, entity.as_bytes()),
        Some(count.to_be_bytes().to_vec()),
    )
}

/// The count of `entity` in a snapshot.
pub fn count_in(snapshot: &fjall::Snapshot, entity: &str) -> Result<i64, StoreError> {
    let value = snapshot
        .get(meta(META_COUNT, entity.as_bytes()))
        .map_err(|e| StoreError::Read(e.into()))?;
    Ok(value
        .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
        .map_or(0, i64::from_be_bytes))
}

/// The key prefix of every row of `entity`.
pub fn entity_prefix(entity: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + entity.len());
    key.push(entity.len() as u8);
    key.extend_from_slice(entity.as_bytes());
    key
}

pub fn row_key(entity: &str, id: &str) -> Vec<u8> {
    let mut key = entity_prefix(entity);
    key.extend_from_slice(id.as_bytes());
    key
}

/// A row as the store holds it: where its latest change came from, and its payload.
#[derive(Debug, Clone)]
pub struct Stored {
    pub operation: Operation,
    pub position: SourcePosition,
    pub source_lsn: Option<i64>,
    pub kafka_timestamp_ms: Option<i64>,
    pub payload: Bytes,
}

const OPERATIONS: [Operation; 5] = [
    Operation::Insert,
    Operation::Update,
    Operation::Delete,
    Operation::Snapshot,
    Operation::Truncate,
];

/// A row's stored value: the header, then the payload.
pub fn encode(event: &ChangeEvent, payload: &[u8]) -> Vec<u8> {
    let topic = event.position.topic.as_str().as_bytes();
    let mut value = Vec::with_capacity(32 + topic.len() + payload.len());
    let op = OPERATIONS
        .iter()
        .position(|o| *o == event.operation)
        .unwrap_or(0) as u8;
    value.push(op);
    value.push(topic.len() as u8);
    value.extend_from_slice(topic);
    value.extend_from_slice(&event.position.partition.to_be_bytes());
    value.extend_from_slice(&event.position.offset.to_be_bytes());
    value.extend_from_slice(&event.source_lsn.unwrap_or(i64::MIN).to_be_bytes());
    value.extend_from_slice(&event.kafka_timestamp_ms.unwrap_or(i64::MIN).to_be_bytes());
    value.extend_from_slice(payload);
    value
}

/// A stored value read in place: its header decoded, its payload borrowed (a table scan
/// judges rows without copying them).
#[derive(Debug, Clone, Copy)]
pub struct StoredRef<'a> {
    pub operation: Operation,
    pub position: SourcePosition,
    pub source_lsn: Option<i64>,
    pub kafka_timestamp_ms: Option<i64>,
    pub payload: &'a [u8],
}

impl<'a> StoredRef<'a> {
    pub fn decode(value: &'a [u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("{} bytes", value.len()));
        let op = *value.first().ok_or_else(corrupt)?;
        let operation = *OPERATIONS.get(op as usize).ok_or_else(corrupt)?;
        let topic_len = *value.get(1).ok_or_else(corrupt)? as usize;
        let topic = value.get(2..2 + topic_len).ok_or_else(corrupt)?;
        let topic = std::str::from_utf8(topic).map_err(|_| corrupt())?;
        let mut at = 2 + topic_len;
        let mut take = |n: usize| {
            let bytes = value.get(at..at + n);
            at += n;
            bytes.ok_or_else(corrupt)
        };
        let partition = i32::from_be_bytes(take(4)?.try_into().expect("4 bytes"));
        let offset = i64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
        let lsn = i64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
        let ts = i64::from_be_bytes(take(8)?.try_into().expect("8 bytes"));
        Ok(Self {
            operation,
            position: SourcePosition::new(topic, partition, offset),
            source_lsn: (lsn != i64::MIN).then_some(lsn),
            kafka_timestamp_ms: (ts != i64::MIN).then_some(ts),
            payload: &value[at..],
        })
    }

    /// The stored event, parsed from its payload; with `fields`, its row images hold only
    /// those top-level fields ([`Row::projected`]): enough to judge a filter that reads no
    /// other, never to be sent.
    pub fn event_reading(&self, fields: Option<&[String]>) -> Result<ChangeEvent, StoreError> {
        let mut reader = serde_json::Deserializer::from_slice(self.payload);
        let read = serde::Deserializer::deserialize_map(&mut reader, PayloadVisitor(fields))
            .and_then(|read| reader.end().map(|()| read));
        let payload = match read {
            Ok(payload) => payload,
            // An image that is not an object cannot be projected: read the payload whole.
            Err(_) if fields.is_some() => return self.event_reading(None),
            Err(e) => return Err(StoreError::Corrupt(format!("payload: {e}"))),
        };
        let missing = |field| StoreError::Corrupt(format!("payload: missing field `{field}`"));
        Ok(ChangeEvent {
            entity_type: payload.entity_type.ok_or_else(|| missing("entity_type"))?,
            entity_id: payload.entity_id,
            operation: self.operation,
            data: payload.data,
            before: payload.before,
            timestamp: payload.timestamp.ok_or_else(|| missing("timestamp"))?,
            position: self.position,
            kafka_timestamp_ms: self.kafka_timestamp_ms,
            source_lsn: self.source_lsn,
        })
    }
}

/// The fields of a stored payload that make its event.
#[derive(Default)]
struct Payload {
    entity_type: Option<String>,
    entity_id: Option<String>,
    data: Option<Row>,
    before: Option<Row>,
    timestamp: Option<String>,
}

/// Reads a stored payload in one pass, its row images whole or projected ([`RowSeed`]).
struct PayloadVisitor<'f>(Option<&'f [String]>);

impl<'de> serde::de::Visitor<'de> for PayloadVisitor<'_> {
    type Value = Payload;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event payload")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Payload, A::Error> {
        let mut payload = Payload::default();
        while let Some(key) = map.next_key::<FieldName<'de>>()? {
            match key.0.as_ref() {
                "entity_type" => payload.entity_type = Some(map.next_value()?),
                "entity_id" => payload.entity_id = map.next_value()?,
                "timestamp" => payload.timestamp = Some(map.next_value()?),
                "data" => payload.data = map.next_value_seed(RowSeed(self.0))?,
                "before" => payload.before = map.next_value_seed(RowSeed(self.0))?,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(payload)
    }
}

impl Stored {
    pub fn decode(value: &[u8]) -> Result<Self, StoreError> {
        let read = StoredRef::decode(value)?;
        Ok(Self {
            operation: read.operation,
            position: read.position,
            source_lsn: read.source_lsn,
            kafka_timestamp_ms: read.kafka_timestamp_ms,
            payload: Bytes::copy_from_slice(read.payload),
        })
    }

    /// The stored event, parsed from its payload.
    pub fn event(&self) -> Result<ChangeEvent, StoreError> {
        StoredRef {
            operation: self.operation,
            position: self.position,
            source_lsn: self.source_lsn,
            kafka_timestamp_ms: self.kafka_timestamp_ms,
            payload: &self.payload,
        }
        .event_reading(None)
    }
}
