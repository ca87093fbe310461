use std::path::Path;

use super::*;
use crate::event::SourcePosition;
use serde_json::json;

fn event(
    id: Option<&str>,
    operation: Operation,
    offset: i64,
    data: serde_json::Value,
) -> ChangeEvent {
    ChangeEvent {
        entity_type: "order".into(),
        entity_id: id.map(str::to_owned),
        operation,
        data: (!data.is_null()).then(|| data.into()),
        before: None,
        timestamp: "2026-11-23T10:00:00Z".into(),
        position: SourcePosition::new("cdc.events", 0, offset),
        kafka_timestamp_ms: None,
        source_lsn: Some(1000 + offset),
    }
}

fn apply(tables: &Tables, event: ChangeEvent) {
    let found = tables.find(&event);
    let payload = Bytes::from(event.payload_json());
    tables.apply(&Arc::new(Latest { event, payload }), found);
}

fn settings(path: &Path, max_bytes: u64) -> Settings {
    Settings {
        path: Some(path.to_owned()),
        max_bytes,
        cache_bytes: 1 << 20,
    }
}

/// Ids and `n` fields of a view's rows of "order" (deleted ones left out).
fn rows(view: View) -> Vec<(String, i64)> {
    let view = Arc::new(view);
    view.rows("order")
        .filter(|row| row.as_ref().unwrap().operation != Operation::Delete)
        .map(|row| {
            let event = row.unwrap().event().unwrap();
            let n = event.data.as_ref().unwrap().value()["n"].as_i64().unwrap();
            (event.entity_id.unwrap(), n)
        })
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cdc-gateway-tables-test-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn holds_each_rows_latest_image_counts_live_rows_and_keeps_delete_markers() {
    let tables = Tables::temporary();
    let p = Partition::new("cdc.events", 0);
    tables.begin(p, 0);
    apply(
        &tables,
        event(Some("1"), Operation::Insert, 0, json!({"n": 1})),
    );
    apply(
        &tables,
        event(Some("2"), Operation::Insert, 1, json!({"n": 2})),
    );
    apply(
        &tables,
        event(Some("1"), Operation::Update, 2, json!({"n": 10})),
    );
    apply(
        &tables,
        event(Some("3"), Operation::Insert, 3, json!({"n": 3})),
    );
    apply(
        &tables,
        event(Some("3"), Operation::Delete, 4, serde_json::Value::Null),
    );
    // Before the commit, the uncommitted rows are what a lookup finds.
    assert!(matches!(
        tables.find(&event(Some("1"), Operation::Update, 5, json!({}))),
        Found::Pending(_)
    ));
    let view = tables.view().unwrap();
    assert!(view.is_complete(), "applied from offset 0");
    assert_eq!(
        view.count("order"),
        3,
        "a deleted row is held as its delete event"
    );
    let deleted = view.row("order", "3").unwrap().unwrap();
    assert_eq!(deleted.operation, Operation::Delete);
    let view = Arc::new(view);
    let ops: Vec<Operation> = view.rows("order").map(|r| r.unwrap().operation).collect();
    assert_eq!(
        ops,
        [Operation::Update, Operation::Insert, Operation::Delete]
    );
    assert_eq!(tables.rows_held(), 3);

    // A truncate empties the entity, committed rows and uncommitted ones.
    apply(
        &tables,
        event(Some("4"), Operation::Insert, 5, json!({"n": 4})),
    );
    apply(
        &tables,
        event(None, Operation::Truncate, 6, serde_json::Value::Null),
    );
    apply(
        &tables,
        event(Some("5"), Operation::Insert, 7, json!({"n": 5})),
    );
    let view = tables.view().unwrap();
    assert_eq!(view.count("order"), 1);
    assert_eq!(rows(view), vec![("5".into(), 5)]);
}

#[test]
fn a_view_is_the_table_as_of_when_it_was_taken() {
    let tables = Tables::temporary();
    tables.begin(Partition::new("cdc.events", 0), 0);
    for i in 0..2000 {
        apply(
            &tables,
            event(
                Some(&format!("{i:05}")),
                Operation::Insert,
                i,
                json!({"n": i}),
            ),
        );
    }
    let view = tables.view().unwrap();
    // Changes after the view: not in it.
    for i in 0..2000 {
        apply(
            &tables,
            event(
                Some(&format!("{i:05}")),
                Operation::Update,
                2000 + i,
                json!({"n": -1}),
            ),
        );
    }
    apply(
        &tables,
        event(Some("99999"), Operation::Insert, 4000, json!({"n": 0})),
    );
    tables.flush().unwrap();
    let seen = rows(view);
    assert_eq!(seen.len(), 2000, "paged past several pages");
    assert!(seen
        .iter()
        .enumerate()
        .all(|(i, (id, n))| *id == format!("{i:05}") && *n == i as i64));
    assert!(rows(tables.view().unwrap())
        .iter()
        .all(|(id, n)| *n == -1 || id == "99999"));
}

#[test]
fn a_reopened_store_has_its_rows_offsets_and_counts() {
    let dir = scratch("reopen");
    {
        let tables = Tables::open(&settings(&dir, u64::MAX)).unwrap();
        let p = Partition::new("cdc.events", 0);
        tables.begin(p, 0);
        apply(
            &tables,
            event(Some("1"), Operation::Insert, 0, json!({"n": 1})),
        );
        apply(
            &tables,
            event(Some("2"), Operation::Insert, 1, json!({"n": 2})),
        );
        tables.reached(p, 5);
        tables.flush().unwrap();
        // Applied and never committed (a crash): read again after the restart.
        apply(
            &tables,
            event(Some("3"), Operation::Insert, 5, json!({"n": 3})),
        );
        assert!(
            Tables::open(&settings(&dir, u64::MAX)).is_err(),
            "a second process on the same store is refused"
        );
        std::mem::forget(tables);
    }
    // The forgotten store still holds its lock file descriptor: release it as a dead process
    // would, by reopening in a fresh directory copy.
    let copy = scratch("reopen-copy");
    copy_dir(&dir, &copy);
    let tables = Tables::open(&settings(&copy, u64::MAX)).unwrap();
    let applied = tables.applied();
    assert_eq!(
        applied[&Partition::new("cdc.events", 0)],
        Applied {
            next: 5,
            complete: true
        }
    );
    assert_eq!(tables.rows_held(), 2);
    let view = tables.view().unwrap();
    assert_eq!(rows(view), vec![("1".into(), 1), ("2".into(), 2)]);
    // An offset already applied changes nothing; a replayed change is recognised by its lsn.
    apply(
        &tables,
        event(Some("1"), Operation::Update, 0, json!({"n": 100})),
    );
    let mut again = event(Some("2"), Operation::Update, 6, json!({"n": 2}));
    again.source_lsn = Some(1001);
    assert!(tables.find(&again).replayed(&again));
    assert_eq!(rows(tables.view().unwrap())[0], ("1".into(), 1));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&copy);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_corrupted_store_is_rebuilt_and_says_so() {
    let dir = scratch("corrupt");
    {
        let tables = Tables::open(&settings(&dir, u64::MAX)).unwrap();
        tables.begin(Partition::new("cdc.events", 0), 0);
        apply(
            &tables,
            event(Some("1"), Operation::Insert, 0, json!({"n": 1})),
        );
        tables.flush().unwrap();
    }
    // Every file of the store overwritten with garbage.
    corrupt(&dir.join("data"));
    let tables = Tables::open(&settings(&dir, u64::MAX)).unwrap();
    assert!(
        tables.applied().is_empty(),
        "nothing trusted: rebuilt from the topics"
    );
    assert_eq!(tables.rows_held(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

fn corrupt(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            corrupt(&entry.path());
        } else {
            let len = entry.metadata().unwrap().len() as usize;
            std::fs::write(entry.path(), vec![0xA5; len.max(16)]).unwrap();
        }
    }
}

#[test]
fn a_full_store_refuses_the_commit_and_keeps_what_it_was_given() {
    let dir = scratch("full");
    let tables = Tables::open(&settings(&dir, 64 << 10)).unwrap();
    tables.begin(Partition::new("cdc.events", 0), 0);
    let pad = "x".repeat(1000);
    for i in 0..100 {
        apply(
            &tables,
            event(
                Some(&i.to_string()),
                Operation::Insert,
                i,
                json!({"n": i, "pad": pad}),
            ),
        );
    }
    let error = tables.flush().unwrap_err();
    assert!(matches!(error, StoreError::Full { .. }), "{error}");
    assert!(tables.failing().is_some());
    // Nothing applied is dropped: the rows are still found, and the view says it is partial.
    assert!(matches!(
        tables.find(&event(Some("99"), Operation::Update, 200, json!({}))),
        Found::Pending(_)
    ));
    assert!(!tables.committed_view().is_complete());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completion_fills_before_images_and_toast_values_from_the_stored_row() {
    let tables = Tables::temporary();
    tables.begin(Partition::new("cdc.events", 0), 0);
    apply(
        &tables,
        event(
            Some("1"),
            Operation::Insert,
            0,
            json!({"n": 1, "doc": "long text"}),
        ),
    );
    tables.flush().unwrap();
    let mut update = event(
        Some("1"),
        Operation::Update,
        1,
        json!({"n": 2, "doc": UNAVAILABLE}),
    );
    let found = tables.find(&update);
    assert!(matches!(found, Found::Stored(_)));
    let done = found.complete(&mut update);
    assert_eq!(done.before, Some(true));
    assert_eq!(done.toast_filled, 1);
    assert_eq!(update.data.as_ref().unwrap().value()["doc"], "long text");
    assert_eq!(update.before.as_ref().unwrap().value()["n"], 1);
    // A stored image newer than the event (read again after a restart) is not used.
    let mut old = event(Some("1"), Operation::Update, 0, json!({"n": 0}));
    let found = tables.find(&old);
    assert_eq!(found.complete(&mut old).before, Some(false));
}

#[test]
fn a_partition_not_applied_from_its_beginning_makes_views_incomplete() {
    let tables = Tables::temporary();
    tables.begin(Partition::new("cdc.events", 0), 0);
    tables.begin(Partition::new("cdc.events", 1), 40);
    assert!(
        !tables.view().unwrap().is_complete(),
        "retention deleted 0..40"
    );
    let tables = Tables::temporary();
    tables.begin(Partition::new("cdc.events", 0), 0);
    tables.lose(Partition::new("cdc.events", 0), 10);
    assert!(!tables.view().unwrap().is_complete(), "records lost");
}

#[test]
fn a_filtered_scan_of_a_large_entity_finds_exactly_the_matching_rows_in_key_order() {
    let tables = Tables::temporary();
    tables.begin(Partition::new("cdc.events", 0), 0);
    // Ids of several shapes, so that some key ranges hold far more rows than others.
    let id = |i: i64| match i % 3 {
        0 => i.to_string(),
        1 => format!(
            "{:08x}-{}",
            (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            i
        ),
        _ => format!("z{i}"),
    };
    let n = 30_000;
    for i in 0..n {
        let data = json!({"n": i, "tenant": if i % 10 == 3 { "acme" } else { "beta" },
                          "bucket": i % 50, "note": "x".repeat(64)});
        let operation = if i % 97 == 0 {
            Operation::Delete
        } else {
            Operation::Insert
        };
        let data = if operation == Operation::Delete {
            serde_json::Value::Null
        } else {
            data
        };
        apply(&tables, event(Some(&id(i)), operation, i, data));
        if tables.should_flush() {
            tables.flush().unwrap();
        }
    }
    let view = Arc::new(tables.view().unwrap());
    let all: Vec<(Vec<u8>, ChangeEvent)> = view
        .keyed_rows("order")
        .map(|row| {
            let (key, stored) = row.unwrap();
            (key, stored.event().unwrap())
        })
        .collect();
    assert_eq!(all.len(), n as usize);
    for spec in [
        json!({"data.tenant": "acme"}),
        json!({"data.bucket": {"gte": 48}}),
        json!({"row.tenant": "acme", "data.bucket": 3}),
        json!({"operation": "delete"}),
    ] {
        let filter = Filter::compile(Some(&spec)).unwrap();
        let expected: Vec<Vec<u8>> = all
            .iter()
            .filter(|(_, event)| filter.matches(event))
            .map(|(key, _)| key.clone())
            .collect();
        assert!(!expected.is_empty(), "{spec}");
        assert_eq!(view.keys_matching("order", &filter), expected, "{spec}");
    }
}

#[test]
fn a_stored_event_reads_whole_or_projected_to_the_fields_a_filter_reads() {
    let mut event = event(
        Some("7"),
        Operation::Update,
        3,
        json!({"n": 1, "tenant": "acme", "big": {"x": [1, "}"]}}),
    );
    event.before = Some(json!({"n": 0, "tenant": "beta"}).into());
    let value = store::encode(&event, &event.payload_json());
    let stored = StoredRef::decode(&value).unwrap();
    assert_eq!(stored.event_reading(None).unwrap(), event);
    let fields = ["tenant".to_owned()];
    let projected = stored.event_reading(Some(&fields)).unwrap();
    assert_eq!(projected.data.unwrap().value(), &json!({"tenant": "acme"}));
    assert_eq!(
        projected.before.unwrap().value(),
        &json!({"tenant": "beta"})
    );
    assert_eq!(projected.entity_id.as_deref(), Some("7"));
    assert_eq!(projected.timestamp, event.timestamp);
    // An image that is not an object is read whole.
    let mut odd = event.clone();
    odd.data = Some(json!([1, 2]).into());
    let value = store::encode(&odd, &odd.payload_json());
    let read = StoredRef::decode(&value)
        .unwrap()
        .event_reading(Some(&fields));
    assert_eq!(read.unwrap().data.unwrap().value(), &json!([1, 2]));
    // A payload cut short is an error, not a row.
    let cut = &value[..value.len() - 3];
    assert!(StoredRef::decode(cut)
        .unwrap()
        .event_reading(Some(&fields))
        .is_err());
}
